"""Session-wide generated work directory (generated once; tests must not modify it)."""

from __future__ import annotations

import pytest

from tests.factories import make_workdir


@pytest.fixture(scope="session")
def small_work(tmp_path_factory):
    """(Workdir, data dir, config) for ~35k generated rows with validate and full feature tables."""
    return make_workdir(tmp_path_factory.mktemp("small"))
