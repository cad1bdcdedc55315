"""The core stays sans-IO: no clocks, sockets, event loops or global randomness in ``gossip/``.

Theory of operation
-------------------
Like ``tests/dht/test_purity.py``, this reads every module of ``gossip/`` as
source (``ast``), without importing it, and checks two things:

* **Imports.**  Every module a gossip module imports is in `ALLOWED_MODULES`
  (the dht core's list: pure standard library, msgpack and the parts of
  ``identity`` that hold no I/O; plus ``hmac``, ``identity.pacing`` and
  libsodium's primitives through ``nacl.bindings`` / ``nacl.public`` /
  ``nacl.signing``), or is ``gossip`` itself; from ``random``
  only the ``Random`` class may come (a type for an injected instance, never
  the module functions that share one global state).  So ``os``, ``time``,
  ``socket``, ``trio``, ``asyncio``, ``secrets`` and ``nacl.utils`` cannot
  come in.
* **Names used.**  An allowed package can still reach a random source as an
  attribute (``import nacl.bindings`` makes ``nacl.utils.random`` reachable,
  and ``nacl.signing.SigningKey.generate()`` draws from the OS).  Every
  dotted name in the code is resolved through the module's imports and
  checked against `FORBIDDEN_NAMES`.

And one check at run time: every gossip constructor that draws randomness
takes ``random_bytes`` with no default, so the caller (the daemon with a
CSPRNG, the simulator with a seeded source) always decides where it comes
from.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gossip.noise import HandshakeState, KeyPair
from gossip.transport import SecureChannel
from tests.dht.test_purity import ALLOWED_MODULES as DHT_ALLOWED_MODULES
from tests.dht.test_purity import imports

GOSSIP = Path(__file__).resolve().parents[2] / "gossip"

#: What a sans-IO core may import: the dht core's list, and the crypto the
#: Noise handshake and identity proofs need.
ALLOWED_MODULES = DHT_ALLOWED_MODULES | {
    "hmac",
    "nacl.bindings",
    "nacl.exceptions",
    "nacl.public",
    "nacl.signing",
    "identity.pacing",
}

#: Qualified names (and everything below them) that draw from a source the
#: core was not given, even though their package is allowed.
FORBIDDEN_NAMES = (
    "nacl.utils",
    "nacl.bindings.randombytes",
    "nacl.public.PrivateKey.generate",
    "nacl.signing.SigningKey.generate",
    "identity.keys.Identity.generate",
    "__import__",
    "importlib",
)


def bindings(tree: ast.AST) -> dict[str, str]:
    """Local name -> the qualified name it stands for, from the module's imports."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is not None:
                    bound[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    bound[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def dotted_names(tree: ast.AST) -> Iterator[str]:
    """Every name and attribute chain rooted in a name (``a.b.c``), as written."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            parts = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                parts.append(value.id)
                yield ".".join(reversed(parts))


def qualified_uses(path: Path) -> set[str]:
    """The dotted names of the module at path, resolved through its imports."""
    tree = ast.parse(path.read_text())
    bound = bindings(tree)
    uses = set()
    for name in dotted_names(tree):
        root, _, rest = name.partition(".")
        uses.add(f"{bound[root]}.{rest}" if root in bound and rest else bound.get(root, name))
    for module, names in imports(path):
        uses.add(module)
        uses.update(f"{module}.{name}" for name in names)
    return uses


def forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_NAMES)


MODULES = sorted(GOSSIP.glob("*.py"))


def test_every_gossip_module_is_checked() -> None:
    names = {path.name for path in MODULES}
    assert {"noise.py", "transport.py", "messages.py", "session.py", "mentions.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_gossip_imports_nothing_impure(path: Path) -> None:
    for module, names in imports(path):
        if module == "gossip" or module.startswith("gossip."):
            continue
        if module == "random":
            assert names == ["Random"], f"{path.name} imports {names} from random"
            continue
        assert module in ALLOWED_MODULES, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_gossip_reaches_no_hidden_random_source(path: Path) -> None:
    bad = sorted(name for name in qualified_uses(path) if forbidden(name))
    assert not bad, f"{path.name} uses {bad}"


def test_the_checks_catch_the_os_random_default(tmp_path: Path) -> None:
    """What the old transport did (``nacl.utils.random`` as a default) fails both checks."""
    old = tmp_path / "old.py"
    old.write_text(
        "import nacl.bindings\n"
        "import nacl.utils\n"
        "from nacl.signing import SigningKey\n"
        "def make(random_bytes=nacl.utils.random): ...\n"
        "key = SigningKey.generate()\n"
        "salt = nacl.bindings.randombytes(16)\n"
    )
    assert [module for module, _ in imports(old) if module not in ALLOWED_MODULES] == ["nacl.utils"]
    assert {name for name in qualified_uses(old) if forbidden(name)} == {
        "nacl.utils",
        "nacl.utils.random",
        "nacl.signing.SigningKey.generate",
        "nacl.bindings.randombytes",
    }
    # Reached as an attribute through an allowed package alone, it is still caught.
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import nacl.bindings\nx = nacl.utils.random(32)\n")
    assert {name for name in qualified_uses(sneaky) if forbidden(name)} == {"nacl.utils", "nacl.utils.random"}


@pytest.mark.parametrize(
    "constructor",
    [KeyPair.generate, HandshakeState, SecureChannel, SecureChannel.initiator, SecureChannel.responder],
    ids=lambda c: c.__qualname__,
)
def test_random_bytes_is_required(constructor: Callable[..., Any]) -> None:
    parameter = inspect.signature(constructor).parameters["random_bytes"]
    assert parameter.default is inspect.Parameter.empty
