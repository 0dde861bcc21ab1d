"""Errors a user can cause. The CLI prints them as one line (``Error: ...``) and exits non-zero."""

from __future__ import annotations


class GalsaeError(Exception):
    """A failure the user can act on (bad input, missing table, ...): exit code 1, no traceback."""

    exit_code = 1


class LakeError(GalsaeError):
    """The lake itself is unusable as asked: unknown table, newer schema, root is a file, locked."""


class InputError(GalsaeError):
    """Input data that cannot be taken as it is: wrong columns, NaN, duplicate ids, ..."""
