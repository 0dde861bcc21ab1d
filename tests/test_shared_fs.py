"""The writers' lock on filesystems without flock: one clear error, never an unlocked write."""

from __future__ import annotations

import errno
import fcntl

import polars as pl
import pytest

from galsae_lake import lake as lake_module
from galsae_lake.errors import LakeError
from galsae_lake.lake import Lake
from galsae_lake.testing import lake_hash


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL])
def test_no_flock_fails_with_one_line_and_writes_nothing(tmp_path, monkeypatch, code):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("seed") as tx:
        tx.write("galaxies", pl.DataFrame({"id_str": ["a"], "source": ["s"], "ra": [1.0],
                                           "dec": [2.0]}), partition={"split": "train"})
    before = lake_hash(lake.root)
    real = fcntl.flock

    def no_flock(handle, op):
        if op & fcntl.LOCK_EX:
            raise OSError(code, "simulated")
        return real(handle, op)

    monkeypatch.setattr(lake_module.fcntl, "flock", no_flock)
    with pytest.raises(LakeError) as caught:
        with lake.transaction("writer") as tx:
            tx.write("galaxies", pl.DataFrame({"id_str": ["b"], "source": ["s"], "ra": [1.0],
                                               "dec": [2.0]}), partition={"split": "train"})
    message = str(caught.value)
    assert "\n" not in message and "without flock" in message, message
    assert errno.errorcode[code] in message
    assert lake_hash(lake.root) == before


def test_other_lock_errors_are_not_hidden(tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")

    def broken(handle, op):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(lake_module.fcntl, "flock", broken)
    with pytest.raises(OSError, match="disk on fire"):
        with lake.lock():
            pass
