"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope="session")
def small_lake(tmp_path_factory):
    """(lake, sae run id, pca id): a small lake with every table (tests/smalllake.py)."""
    from smalllake import build_small_lake

    return build_small_lake(tmp_path_factory.mktemp("small") / "lake")
