"""The one family of user-facing errors.

The CLI catches `LatentstoreError` once and shows it as a single line with its exit code; anything
else is a bug and keeps its traceback. Exit codes tell scripts what happened.
"""


class LatentstoreError(Exception):
    """A failure the user can act on (bad argument, bad input, missing store item)."""

    exit_code = 1


class InputError(LatentstoreError):
    """A bad input file or argument: nothing was written."""

    exit_code = 2


class StoreError(LatentstoreError):
    """The store is missing, locked or inconsistent."""

    exit_code = 3


class PartialFailure(LatentstoreError):
    """The run finished, but some inputs were rejected (see the `errors` records)."""

    exit_code = 4
