"""Shared fixtures. Real-data tests read ../shared/data and skip with a reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("M3W_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; skips the calling test when it is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real test data not found at {p} (set M3W_SHARED_DATA or place shared/ beside the repo)")
    return p


@pytest.fixture
def shared_data() -> Path:
    return shared_path()
