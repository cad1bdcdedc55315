"""Fixtures shared by the test modules."""

import itertools
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
    """Files that take long first, simulations (CPU) and the rest (node processes, which
    mostly wait) taking turns; each file's tests in their order.

    pytest-xdist hands out whole files (``--dist loadfile``) in this order
    (``--no-loadscope-reorder``: by default it orders them by their number of
    tests, which put files of a few long simulations last, and one worker ran
    them for minutes while the other had nothing left).  Longest first keeps
    the end of the run to short files on both workers; taking turns keeps both
    workers from waiting on node processes at once while the cores idle.
    """
    files: dict[Path, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    long_files = [path for path, tests in files.items() if any(_runs_long(item) for item in tests)]
    cpu = [path for path in long_files if "simulations" in path.parts]
    waits = [path for path in long_files if "simulations" not in path.parts]
    turns = [path for pair in itertools.zip_longest(cpu, waits) for path in pair if path is not None]
    taken = set(turns)
    rest = [path for path in files if path not in taken]
    items[:] = [item for path in turns + rest for item in files[path]]
