"""Helpers shared by the tests: hashing a lake, running the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from galsae_lake.cli import main


def lake_hash(root: str | os.PathLike) -> str:
    """A hash of every file (path and bytes) and folder under ``root``; '' when it does not exist."""
    root = Path(root)
    if not root.exists():
        return ""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cli(*args: str, lake: str | os.PathLike | None = None, input: str | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, output)."""
    argv = (["--lake", str(lake)] if lake is not None else []) + [str(a) for a in args]
    return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)


def run_cli(*args: str, lake: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``galsae-lake`` in a fresh process (as a user would)."""
    argv = [sys.executable, "-m", "galsae_lake"]
    argv += (["--lake", str(lake)] if lake is not None else []) + [str(a) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result, *fragments: str) -> None:
    """A user error: non-zero exit, one line starting with 'Error:', no traceback."""
    output = getattr(result, "output", None)
    if output is None:
        output = result.stdout + result.stderr
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    assert code not in (0, None), output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), output
