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


def _runs_long(item: pytest.Item) -> bool:
    """A test of a file that takes long: a simulation, real node processes, or marked ``slow``."""
    path = item.path
    if "simulations" in path.parts or path.name.endswith("_processes.py"):
        return True
    return item.get_closest_marker("slow") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that take long first, each file's tests in their order.

    pytest-xdist hands out whole files (``--dist loadfile``) in this order
    (``--no-loadscope-reorder``: by default it orders them by their number of
    tests, which put files of a few long simulations last, and one worker ran
    them for minutes while the other had nothing left).  Longest first keeps
    the end of the run to short files on both workers.
    """
    long_files = {item.path for item in items if _runs_long(item)}
    items.sort(key=lambda item: item.path not in long_files)  # stable: order kept within each group
