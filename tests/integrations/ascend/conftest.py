from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def dirs(settings: Any, tmp_path: Path) -> Any:
    """A fresh staging directory and drop box directory per test."""
    settings.ASCEND_STAGING_DIR = str(tmp_path / "staging")
    settings.ASCEND_DESTINATION = str(tmp_path / "dropbox")
    (tmp_path / "dropbox").mkdir()

    class Dirs:
        staging = tmp_path / "staging"
        dropbox = tmp_path / "dropbox"

    return Dirs
