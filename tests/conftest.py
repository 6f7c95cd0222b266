"""Fixtures shared by every test; the helpers themselves live in ``tests/helpers/`` and are
imported from there (``from tests.helpers.recipes import ...``)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.recipes import TINY


@pytest.fixture(scope="session", autouse=True)
def builtin_shard_cache(tmp_path_factory):
    """One cache of built-in shard sets for the whole test session (the tests and the recipes they
    start as subprocesses), never the user's ``~/.cache/cvdist``."""
    cache = tmp_path_factory.mktemp("cvdist-cache")
    previous = os.environ.get("CVDIST_CACHE_DIR")
    os.environ["CVDIST_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CVDIST_CACHE_DIR", None)
    else:
        os.environ["CVDIST_CACHE_DIR"] = previous


@pytest.fixture
def tiny_args(tmp_path):
    return [*TINY, f"output_dir={tmp_path / 'runs'}"]
