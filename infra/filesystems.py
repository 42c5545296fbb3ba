"""Paths that may be object storage (``s3://``, ``gs://``) as well as local files.

Every path the user or the pipeline gives (corpus, records, pipeline root, serving base path)
is read and written through ``tf.io.gfile`` (TensorFlow, TFX's ``fileio``) or Beam's
``FileSystems`` (the Beam job's sources and sinks), never ``pathlib`` / ``open()``.

- ``gs://``: built into TensorFlow and Beam (``apache-beam[gcp]``); nothing to set up.
- ``s3://``: Beam through its AWS extra (boto3), TensorFlow 2.16 only once ``tensorflow_io`` is
  imported (its filesystem plugin). Both are configured with the standard AWS variables
  (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``):
  boto3 reads them itself; the plugin reads ``S3_ENDPOINT`` instead, which :func:`enable`
  derives from ``AWS_ENDPOINT_URL`` (this is the one place that mapping is made).

tensorflow-io 0.37.1 (the last release for TF 2.16) aborts a process that used its S3
filesystem at exit ("pure virtual method called"): the AWS SDK's global EC2-metadata client is
destroyed by a C++ static destructor after the SDK's log system it logs to (the plugin never
calls ``Aws::ShutdownAPI``; fixed upstream in tensorflow/io#2120, not released). A command
that used it ends through :func:`infra.process_exit.exit_process`: Python's own exit work, then
no C++ static destructors. Beam workers import :mod:`infra.s3_worker` (``--beam_plugin``,
:func:`beam_args`), which does the same for them.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable, List, Optional
from urllib.parse import urlparse

S3 = "s3://"
WORKER_PLUGIN = "infra.s3_worker"
_S3_ENABLED = False


def is_url(path) -> bool:
    """``s3://...``, ``gs://...`` (anything with a scheme), not a local path."""
    return "://" in str(path)


def absolute(path) -> str:
    """A local path made absolute (workers of a cluster runner run elsewhere); a URL as it is."""
    return str(path) if is_url(path) else os.path.abspath(path)


def join(base, *parts: str) -> str:
    return posixpath.join(str(base), *parts) if is_url(base) else os.path.join(base, *parts)


def basename(path) -> str:
    path = str(path).rstrip("/")
    return posixpath.basename(path) if is_url(path) else os.path.basename(path)


def dirname(path) -> str:
    path = str(path).rstrip("/")
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def s3_settings(environ=os.environ) -> dict:
    """The tensorflow-io S3 plugin's variables derived from the AWS ones, for those unset:
    ``S3_ENDPOINT`` from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (the plugin takes the
    URL whole), ``S3_USE_HTTPS`` from its scheme, ``AWS_REGION`` from ``AWS_DEFAULT_REGION``."""
    settings = {}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint and not environ.get("S3_ENDPOINT"):
        scheme = urlparse(endpoint).scheme
        if scheme not in ("http", "https"):
            raise ValueError(
                f"AWS_ENDPOINT_URL must be an http:// or https:// URL, got {endpoint!r}"
            )
        settings["S3_ENDPOINT"] = endpoint
        if "S3_USE_HTTPS" not in environ:
            settings["S3_USE_HTTPS"] = "1" if scheme == "https" else "0"
    if environ.get("AWS_DEFAULT_REGION") and not environ.get("AWS_REGION"):
        settings["AWS_REGION"] = environ["AWS_DEFAULT_REGION"]
    return settings


def enable_s3() -> None:
    """Registers ``s3://`` with ``tf.io.gfile`` in this process (idempotent)."""
    global _S3_ENABLED
    if _S3_ENABLED:
        return
    os.environ.update(s3_settings())  # before the plugin first reads them
    import tensorflow_io  # noqa: F401 - importing it registers the s3:// filesystem plugin

    _S3_ENABLED = True


def enable(*paths) -> None:
    """Makes every path's filesystem usable by TensorFlow here (``s3://``: tensorflow-io)."""
    if any(str(p).startswith(S3) for p in paths if p is not None):
        enable_s3()


def s3_enabled() -> bool:
    return _S3_ENABLED


def beam_args(paths: Iterable, args: Optional[List[str]] = None) -> List[str]:
    """``args`` plus what Beam workers need to read and write ``paths``: for ``s3://``, the
    worker plugin that registers tensorflow-io there (TFX's Beam components open models and
    artifacts with ``tf.io.gfile``); Beam's own S3 IO needs nothing (boto3 reads AWS_*)."""
    args = list(args or [])
    plugin = f"--beam_plugin={WORKER_PLUGIN}"
    if any(str(p).startswith(S3) for p in paths if p is not None) and plugin not in args:
        args.append(plugin)
    return args
