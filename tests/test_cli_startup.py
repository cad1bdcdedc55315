"""The CLI imports the node only for the commands that run one.

Offline commands (`import`, `log`, `timeline`, ...) and the ones that talk to
a running node over the control port need the store and the control client,
not trio, the DHT or gossip; importing those cost 0.15-0.2 s of CPU per command
(and of every `p2pblog import`).  Asserted on the modules loaded, not on time.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("trio", "p2pblog.daemon", "p2pblog.runtime", "p2pblog.node", "dht.core", "gossip.session")


def loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_the_cli_module_loads_no_node_code() -> None:
    loaded = loaded_after("import cli.main")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


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
