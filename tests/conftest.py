"""Fixtures shared by the test modules."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pblog.store import Store
from tests.nodes import nodes

__all__ = ["nodes", "store"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An open, empty store on disk (a module may define its own ``store`` instead)."""
    with Store(tmp_path / "store.sqlite3") as s:
        yield s
