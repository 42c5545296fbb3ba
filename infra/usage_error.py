"""The error every layer raises for a problem with what the user asked for (a missing directory,
a bad option value, a model that cannot be reached): the ``cme-ser`` command (cli/main.py)
prints it as one line and exits with code 2, without a traceback."""


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""
