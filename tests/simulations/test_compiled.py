"""The compiled build (`simulations.compiled`, mypyc) gives the pure build's results, byte for byte.

The test compiles `TEST_MODULES` (a build of the full `MODULES` takes two to
four minutes on two cores; this subset about a minute), reusing a build of
the same sources under ``build/compiled/`` as the build command does, then
runs scenarios through the real command line twice in child processes, once
pure and once with the compiled modules, and compares ``metrics.json``.  The
subset holds the event loop, the simulated network and endpoint (which needed
`simulations.sides` to compile), the DHT's rate limiter (which needed a
method for its alias), the routing table and the wire codec, and the
replicator (whose `StoreFeeds` the adversaries subclass).  The benchmark
runs the full set (docs/design.md, "Simulator at scale: the compiled build").

A machine without a C compiler or Python's headers fails here with a message
that says which, rather than skipping: the build is optional for users, not
for the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.compiled import BUILD_ROOT, MODULES, ROOT, BuildError, activate, build, build_dir
from tests.process import child_env

pytestmark = pytest.mark.slow

#: Compiled for the test: a subset of `MODULES` chosen to cover each change mypyc needed.
TEST_MODULES = (
    "dht.ratelimit",
    "dht.routing",
    "dht.wire",
    "p2pblog.replication",
    "simulations.endpoint",
    "simulations.engine",
    "simulations.network",
)

#: Runs the command line in a child with the build given as its first argument active, and
#: prints, after the run, the file each compiled module was loaded from.
COMPILED_CLI = """
import sys
from pathlib import Path
from simulations.compiled import activate
directory = activate(Path(sys.argv[1]))
from cli.main import main
try:
    main(sys.argv[2:], prog_name="p2pblog")
finally:
    import json
    modules = json.loads((directory / "manifest.json").read_text())["modules"]
    print("LOADED " + json.dumps({name: getattr(sys.modules.get(name), "__file__", "") for name in modules}))
"""


@pytest.fixture(scope="module")
def compiled() -> Path:
    assert set(TEST_MODULES) <= set(MODULES)
    try:
        return build(TEST_MODULES)
    except BuildError as exc:
        pytest.fail(f"the compiled build could not be made (needs gcc, Python headers, mypy): {exc}")


def run_cli(out: Path, *args: str, build: Path | None) -> str:
    command = [sys.executable, "-m", "p2pblog"]
    if build is not None:
        command = [sys.executable, "-c", COMPILED_CLI, str(build)]
    result = subprocess.run(
        [*command, "sim", "run", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(None),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["baseline", "--nodes", "30", "--duration", "300"],
        ["crash-and-loss", "--nodes", "24", "--duration", "400"],
    ],
    ids=["baseline", "crash-and-loss"],
)
def test_compiled_and_pure_runs_write_identical_metrics(
    compiled: Path, tmp_path: Path, args: list[str]
) -> None:
    run_cli(tmp_path / "pure", *args, build=None)
    stdout = run_cli(tmp_path / "compiled", *args, build=compiled)
    loaded = json.loads(stdout.rsplit("LOADED ", 1)[1])
    assert set(loaded) == set(TEST_MODULES)
    assert all(str(file).endswith(".so") and str(compiled) in str(file) for file in loaded.values()), loaded
    pure = (tmp_path / "pure" / "metrics.json").read_bytes()
    assert json.loads(pure)["metrics"]["delivery"]["delivered"] > 0  # a run that did something
    assert (tmp_path / "compiled" / "metrics.json").read_bytes() == pure


def test_a_build_is_reused_while_its_sources_are_unchanged(compiled: Path) -> None:
    started = compiled.stat().st_mtime
    assert build(TEST_MODULES) == compiled == build_dir(TEST_MODULES)
    assert compiled.stat().st_mtime == started
    assert build_dir(TEST_MODULES) != build_dir(MODULES)


def test_activating_after_the_pure_modules_were_imported_is_refused(compiled: Path) -> None:
    import simulations.engine  # noqa: F401 (imported pure, as in every test process)

    before = list(sys.meta_path)
    with pytest.raises(BuildError, match=r"already imported pure: .*simulations\.engine"):
        activate(compiled)
    assert sys.meta_path == before


def test_asking_for_a_build_that_does_not_exist_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"python -m simulations\.compiled build"):
        activate(root=tmp_path)
    assert BUILD_ROOT == ROOT / "build" / "compiled"
