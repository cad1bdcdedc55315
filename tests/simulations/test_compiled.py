"""The compiled build (`simulations.compiled`, mypyc) gives the pure build's results, byte for byte.

The test compiles `TEST_MODULES` (a build of the full `MODULES` takes two to
five minutes on two busy cores; this subset one to three), reusing a build of
the same sources under ``build/compiled/`` as the build command does, then
runs scenarios (and a sweep, whose workers are forked and get the scenario
pickled) through the real command line twice in child processes, once pure
and once with the compiled modules, and compares ``metrics.json``.  The
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

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.compiled import (
    BUILD_ROOT,
    MODULES,
    PACKAGES,
    ROOT,
    BuildError,
    activate,
    build,
    build_dir,
    dependencies,
    source_path,
)
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
        [*command, "sim", *args, "--out", str(out)],
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
    ("args", "outputs"),
    [
        (["run", "baseline", "--nodes", "20", "--duration", "200"], ["."]),
        (["run", "crash-and-loss", "--nodes", "16", "--duration", "400"], ["."]),
        # Workers are forked after the option is read, and the scenario is pickled to them.
        (
            ["sweep", "baseline", "--seeds", "1..2", "--nodes", "12", "--duration", "300", "-j", "2"],
            ["seed-1", "seed-2"],
        ),
        # Spawned shard workers take the coordinator's build; the DHT model's view crosses shards.
        (["run", "baseline", "--nodes", "20", "--duration", "200", "--dht", "model", "--shards", "2"], ["."]),
    ],
    ids=["baseline", "crash-and-loss", "sweep", "sharded-model"],
)
def test_compiled_and_pure_runs_write_identical_metrics(
    compiled: Path, tmp_path: Path, args: list[str], outputs: list[str]
) -> None:
    run_cli(tmp_path / "pure", *args, build=None)
    stdout = run_cli(tmp_path / "compiled", *args, build=compiled)
    loaded = json.loads(stdout.rsplit("LOADED ", 1)[1])
    assert set(loaded) == set(TEST_MODULES)
    assert all(str(file).endswith(".so") and str(compiled) in str(file) for file in loaded.values()), loaded
    for output in outputs:
        pure = (tmp_path / "pure" / output / "metrics.json").read_bytes()
        assert json.loads(pure)["metrics"]["delivery"]["delivered"] > 0  # a run that did something
        assert (tmp_path / "compiled" / output / "metrics.json").read_bytes() == pure


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


def test_a_build_depends_on_the_project_modules_its_modules_import() -> None:
    # dht.wire takes its size limit, a Final constant mypyc copies, from identity.limits; the
    # endpoint's protocols live in simulations.sides: editing either must make the build stale.
    assert ROOT / "identity" / "limits.py" in dependencies(["dht.wire"])
    assert ROOT / "simulations" / "sides.py" in dependencies(["simulations.endpoint"])
    assert ROOT / "simulations" / "report.py" not in dependencies(MODULES)
    assert all(path.is_relative_to(ROOT) for path in dependencies(MODULES))  # msgpack, nacl: not followed


#: Base classes that make a class one mypyc does not compile to a native class (free to subclass).
NON_NATIVE_BASES = {"Enum", "IntEnum", "StrEnum", "Protocol", "NamedTuple", "TypedDict"}


def test_every_python_subclass_of_a_compiled_class_is_allowed() -> None:
    # In the compiled build, a Python class that subclasses a compiled one raises TypeError when it
    # is defined, unless the compiled class says `allow_interpreted_subclasses` (identity.compile_hints).
    # The scenarios above only catch the subclasses they happen to import; this reads every module of
    # the project that is not compiled, resolving the bases through its imports.
    native: dict[tuple[str, str], bool] = {}  # (module, class) -> allows interpreted subclasses
    for module in MODULES:
        tree = ast.parse(source_path(module).read_text())
        for node in [node for node in tree.body if isinstance(node, ast.ClassDef)]:
            if not {ast.unparse(base).split(".")[-1].split("[")[0] for base in node.bases} & NON_NATIVE_BASES:
                hints = [ast.unparse(decorator) for decorator in node.decorator_list]
                native[module, node.name] = any("allow_interpreted_subclasses=True" in h for h in hints)
    # A package's __init__ re-exports names (`from dht import DhtCore`): resolve them to their module.
    reexported: dict[tuple[str, str], tuple[str, str]] = {}
    for package in PACKAGES:
        for node in ast.walk(ast.parse((ROOT / package / "__init__.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    reexported[package, alias.asname or alias.name] = (node.module, alias.name)
    refused = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if module in MODULES:
                continue
            tree = ast.parse(path.read_text())
            imported = {
                alias.asname or alias.name: (node.module, alias.name)
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module
                for alias in node.names
            }
            for node in ast.walk(tree):
                for base in node.bases if isinstance(node, ast.ClassDef) else []:
                    origin = imported.get(ast.unparse(base))
                    origin = reexported.get(origin, origin) if origin is not None else None
                    if origin is not None and native.get(origin) is False:
                        refused.append(f"{module}.{node.name} subclasses {'.'.join(origin)}")
    assert native[("p2pblog.node", "NodeCore")]  # the adversaries' base: the scan sees the hint
    assert refused == []


def test_the_command_line_imports_no_compiled_module_before_its_option_is_read() -> None:
    # `--compiled` activates the build in its option's callback: a compiled module that the command
    # line imports before that (at start-up) would make every compiled run refuse ("too late").
    probe = "import json, sys, cli.main; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=child_env(None)
    )
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout))
    assert "cli.main" in imported
    assert imported & set(MODULES) == set()
