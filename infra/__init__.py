"""What every layer may use and that is no one layer's job: paths that may be object storage
(``filesystems``), ending a process that used tensorflow-io's S3 filesystem (``process_exit``,
``s3_worker`` for Beam workers), and the error for a problem with what the user asked for
(``usage_error``). It imports no other project package."""
