"""The core stays sans-IO: no clocks, sockets, event loops or global randomness in ``dht/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DHT = Path(__file__).resolve().parents[2] / "dht"

ALLOWED_MODULES = {
    "__future__",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "ipaddress",
    "itertools",
    "typing",
    "msgpack",
    "identity.keys",
    "identity.errors",
    "identity.netaddr",
    "identity.pacing",
    "identity.limits",
    # A class decorator for the optional mypyc build; it does nothing at run time.
    "identity.compile_hints",
}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("path", sorted(DHT.glob("*.py")), ids=lambda p: p.name)
def test_dht_imports_nothing_impure(path: Path) -> None:
    for module, names in imports(path):
        if module == "dht" or module.startswith("dht."):
            continue
        if module == "random":
            # Only the class, for type hints and the injected instance; never
            # the module-level functions that share a global state.
            assert names == ["Random"], f"{path.name} imports {names} from random"
            continue
        assert module in ALLOWED_MODULES, f"{path.name} imports {module}"
