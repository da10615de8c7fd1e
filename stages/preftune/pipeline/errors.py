"""Errors a user can fix. Stage scripts print them as one line and exit non-zero."""

import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input or configuration: the message says where, what is wrong, and what to do."""


class DataError(UserError):
    """A dataset file or row is unusable."""


class ConfigError(UserError):
    """A params.yaml key has a bad value."""


@contextmanager
def exit_on_user_error(stage: str):
    """Turn a UserError into one line on stderr and exit status 2 (a traceback helps nobody here)."""
    try:
        yield
    except UserError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
