"""The agreed import direction holds: cli -> web -> p2pblog -> {dht, gossip} -> identity.

dht and gossip never import each other or anything above them; identity
imports none of the project's other packages; p2pblog never imports web
(the node does not import a front-end); nothing imports cli or
simulations.  The exceptions are ``p2pblog/__main__.py``, the entry-point
shim behind ``python -m p2pblog``, and ``cli/sim.py``, the ``p2pblog sim``
commands, which run the simulator for the user (docs/design.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("identity", "dht", "gossip", "p2pblog", "web", "cli", "simulations")
#: What each package may import from the project.
ALLOWED = {
    "identity": {"identity"},
    "dht": {"dht", "identity"},
    "gossip": {"gossip", "identity"},
    "p2pblog": {"p2pblog", "dht", "gossip", "identity"},
    "web": {"web", "p2pblog", "identity"},
    "cli": {"cli", "web", "p2pblog", "dht", "gossip", "identity"},
    "simulations": {"simulations", "p2pblog", "dht", "gossip", "identity"},
}
EXCEPTIONS = {("p2pblog/__main__.py", "cli"), ("cli/sim.py", "simulations")}


def project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    return found


MODULES = [p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    rel = str(path.relative_to(ROOT))
    wrong = {name for name in project_imports(path) - ALLOWED[package] if (rel, name) not in EXCEPTIONS}
    assert not wrong, f"{rel} imports {sorted(wrong)} against the agreed layering"
