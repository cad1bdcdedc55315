"""The node's cores stay sans-IO, and the drivers hold no policy of their own.

1. Purity: the modules that make up `NodeCore` (``p2pblog/node.py``, the parts
   it composes, the replicator and dial policy) import no clock, socket,
   event loop, OS randomness or global RNG, and none of the driver modules
   (runtime, daemon, control API).  ``tests/dht/test_purity.py`` and
   ``tests/gossip/test_purity.py`` hold the same rule for ``dht/`` and
   ``gossip/``.  The store (SQLite on disk) is the one I/O a core may do:
   every append must be durable before the core reports it.
2. One lifecycle: start-up and shutdown policy lives in the core
   (``p2pblog/lifecycle.py``); the daemon, the simulator's node and the
   runtime only call ``start``/``close`` and move bytes.  A driver that
   defines its own copy of a policy constant, or drives the start-up steps
   itself (bootstrap, publish, saving contacts), fails here.
3. Each policy constant is defined once in the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.dht.test_purity import imports

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = [
    "p2pblog/node.py",
    "p2pblog/lifecycle.py",
    "p2pblog/own_records.py",
    "p2pblog/discovery.py",
    "p2pblog/mentions.py",
    "p2pblog/dms.py",
    "p2pblog/devices.py",
    "p2pblog/pairing.py",
    "p2pblog/rotation.py",
    "p2pblog/queries.py",
    "p2pblog/record_rules.py",
    "p2pblog/events.py",
    "p2pblog/replication.py",
    "p2pblog/dialing.py",
    "p2pblog/scoring.py",
    "p2pblog/actions.py",
    "identity/pacing.py",
    "identity/netaddr.py",
]
DRIVERS = ["p2pblog/daemon.py", "p2pblog/runtime.py", "simulations/node.py", "simulations/endpoint.py"]
#: Standard modules with no clock, I/O or global state.
PURE_STDLIB = {
    "__future__",
    "base64",
    "hmac",
    "msgpack",
    "collections",
    "collections.abc",
    "contextlib",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "ipaddress",
    "itertools",
    "math",
    "typing",
}
#: Project modules a core must not import: the drivers and what only they use.
DRIVER_MODULES = {
    "p2pblog.runtime",
    "p2pblog.daemon",
    "p2pblog.control",
    "p2pblog.demo",
    "p2pblog.home",
    "identity.keyfile",
}
PROJECT = ("identity", "dht", "gossip", "p2pblog")


def assigned(module: ast.Module) -> list[str]:
    """Names a module assigns at its top level."""
    names = []
    for node in module.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [target.id for target in targets if isinstance(target, ast.Name)]
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_modules_import_nothing_impure(module: str) -> None:
    for name, names in imports(ROOT / module):
        if name == "random":
            assert names == ["Random"], f"{module} imports {names} from random (only the class may be used)"
            continue
        if name.split(".")[0] in PROJECT:
            assert name not in DRIVER_MODULES, f"{module} imports the driver module {name}"
            continue
        assert name in PURE_STDLIB, f"{module} imports {name}"


def test_the_purity_check_catches_a_clock(tmp_path: Path) -> None:
    # The check above must be able to fail: a core that reads the clock is refused.
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom random import random\n")
    assert ("time", []) in imports(bad)
    assert ("random", ["random"]) in imports(bad)


#: What a driver must not do itself: the start-up steps are the core's (NodeCore.start).
LIFECYCLE_CALLS = {"bootstrap", "publish", "set_addresses", "save_contacts", "load_contacts", "announce"}


def _policy_constants() -> dict[str, str]:
    """UPPER_CASE module constants of the core modules -> the module defining them."""
    out: dict[str, str] = {}
    for module in CORE_MODULES:
        for name in assigned(ast.parse((ROOT / module).read_text())):
            if name.isupper() and len(name) > 2:
                out[name] = module
    return out


@pytest.mark.parametrize("driver", DRIVERS)
def test_drivers_hold_no_lifecycle_policy(driver: str) -> None:
    tree = ast.parse((ROOT / driver).read_text())
    constants = _policy_constants()
    for name in assigned(tree):
        assert name not in constants, f"{driver} defines {name}, which is {constants[name]}'s policy"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in LIFECYCLE_CALLS, (
                f"{driver} line {node.lineno} calls .{node.func.attr}(): start-up is NodeCore.start's job"
            )


def test_the_policy_check_catches_a_copied_schedule() -> None:
    # The old simulator driver defined its own PUBLISH_RETRY and called core.publish.
    constants = _policy_constants()
    assert constants["PUBLISH_RETRY"] == "p2pblog/lifecycle.py"
    assert constants["SAVE_CONTACTS_EVERY"] == "p2pblog/lifecycle.py"
    copied = ast.parse("PUBLISH_RETRY = (2.0, 5.0)\ncore.publish(addrs, now)\n")
    assert set(assigned(copied)) & set(constants) == {"PUBLISH_RETRY"}
    assert any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in LIFECYCLE_CALLS
        for n in ast.walk(copied)
    )


def test_each_policy_constant_is_defined_once() -> None:
    constants = _policy_constants()
    for package in ("identity", "dht", "gossip", "p2pblog", "simulations", "cli"):
        for path in sorted((ROOT / package).glob("*.py")):
            module = str(path.relative_to(ROOT))
            for name in assigned(ast.parse(path.read_text())):
                if name in constants:
                    assert constants[name] == module, (
                        f"{name} is defined in {module} and in {constants[name]}"
                    )
