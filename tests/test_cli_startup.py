"""The CLI imports the node only for the commands that run one.

Offline commands (`import`, `log`, `timeline`, ...) and the ones that talk to
a running node over the control port need the store and the control client,
not trio, the DHT or gossip; importing those cost 0.15-0.2 s of CPU per command
(and of every `p2pblog import`).  The commands a user types most (`id`, `post`,
`timeline`, `status`) load no more than they use either: not the web app, the
simulator, the search index, worker processes (`concurrent.futures.process`,
`multiprocessing`) or Argon2id (an encrypted key's KDF); issue 16 holds them
under 0.1 s of CPU each (`benchmarks/bench_cli.py`).  Asserted on the modules
loaded, not on time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, start_node

HEAVY = ("trio", "p2pblog.daemon", "p2pblog.runtime", "p2pblog.node", "dht.core", "gossip.session")
#: Also not loaded by the everyday commands.
NOT_EVERYDAY = (
    *HEAVY,
    "web.app",
    "starlette",
    "hypercorn",
    "jinja2",
    "simulations",
    "cli.sim",
    "cli.social",
    "p2pblog.search",
    "p2pblog.verify",
    "concurrent.futures.process",
    "multiprocessing",
    "nacl.pwhash",
    "nacl.secret",
)


def loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def _invoke(home: Path, *commands: tuple[str, ...]) -> str:
    lines = ["from click.testing import CliRunner", "from cli.main import main"]
    for args in commands:
        lines += [
            f"r = CliRunner().invoke(main, ['--home', {str(home)!r}, *{list(args)!r}])",
            "assert r.exit_code == 0, (r.output, r.exception)",
        ]
    return "\n".join(lines)


def test_the_cli_module_loads_no_node_code() -> None:
    loaded = loaded_after("import cli.main")
    assert not loaded & set(NOT_EVERYDAY), sorted(loaded & set(NOT_EVERYDAY))


def test_an_offline_command_runs_without_node_code(tmp_path: object) -> None:
    code = (
        "from click.testing import CliRunner\n"
        "from cli.main import main\n"
        f"r = CliRunner().invoke(main, ['--home', {str(tmp_path)!r}, 'init'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(main, ['--home', {str(tmp_path)!r}, 'log'])\n"
        "assert r.exit_code == 0, r.output"
    )
    loaded = loaded_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "p2pblog.store" in loaded  # it did open the store


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "node"
    subprocess.run(
        [sys.executable, "-m", "p2pblog", "--home", str(home), "init"], check=True, capture_output=True
    )
    return home


@pytest.mark.parametrize("args", [("id",), ("id", "--json"), ("timeline",), ("post", "hello", "world")])
def test_everyday_commands_load_only_what_they_use(home: Path, args: tuple[str, ...]) -> None:
    loaded = loaded_after(_invoke(home, args))
    assert not loaded & set(NOT_EVERYDAY), sorted(loaded & set(NOT_EVERYDAY))


def test_id_does_not_even_open_the_store(home: Path) -> None:
    loaded = loaded_after(_invoke(home, ("id",)))
    assert "p2pblog.store" not in loaded and "p2pblog.entry" in loaded


@pytest.mark.slow
def test_commands_through_the_control_port_load_only_the_client(home: Path) -> None:
    node: NodeProcess = start_node(home)
    try:
        loaded = loaded_after(_invoke(home, ("post", "to", "the", "node"), ("status",), ("timeline",)))
    finally:
        node.stop()
    assert "p2pblog.control" in loaded
    assert not loaded & set(NOT_EVERYDAY), sorted(loaded & set(NOT_EVERYDAY))


def test_help_lists_every_command_without_loading_node_code(tmp_path: object) -> None:
    # --help imports every command module (for their one-line help): the DM, device, track
    # and followers commands must load the node's parts only when they run.
    code = (
        "from click.testing import CliRunner\n"
        "from cli.main import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0 and 'device' in r.output and 'dm' in r.output, r.output"
    )
    loaded = loaded_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
