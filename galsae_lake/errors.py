"""Errors a user can cause. The CLI prints them as one line (``Error: ...``) and exits non-zero."""

from __future__ import annotations


class GalsaeError(Exception):
    """A failure the user can act on (bad input, missing table, ...): exit code 1, no traceback."""

    exit_code = 1


class LakeError(GalsaeError):
    """The lake itself is unusable as asked: unknown table, newer schema, root is a file, locked."""


class InputError(GalsaeError):
    """Input data that cannot be taken as it is: wrong columns, NaN, duplicate ids, ..."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, whitespace squeezed."""
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or quota), also as Arrow reports it (no errno set)."""
    import errno

    return (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "no space left on device" in str(exc).lower())


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system failure: a full disk, no permission, a missing file."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if is_no_space(exc):
        return f"no space left on the lake's disk{where}: free some space and run it again"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return (f"permission denied{where}: the lake (or that path) is read-only for this user"
                if where else "permission denied: the lake (or a path) is read-only for this user")
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror}{where}"
    return first_line(exc) + where
