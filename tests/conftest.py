"""Shared fixtures: small hand-made interaction files and (when a test needs real data) ML-100K."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafiles import synthetic_rows, write_inter


@pytest.fixture
def small_inter(tmp_path: Path) -> Path:
    return write_inter(tmp_path / "small.inter", synthetic_rows())


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The real MovieLens-100K (fetched once into the user cache; never committed)."""
    from recblr.datasets import fetch_ml100k

    return fetch_ml100k()
