"""The optional compiled build of the simulator's hot modules (mypyc).

Theory of operation
-------------------
``python -m simulations.compiled build`` compiles `MODULES` (the modules a
profile of a 200-node ``baseline`` run spends its time in: the DHT, the
gossip session, the node core, the simulated network) with mypyc, the
compiler that ships with mypy, into C extension modules.  It compiles the
annotated source we already have: there is no second copy of the code to
keep in step, and the compiled build runs the same statements, so a
scenario gives the same ``metrics.json`` either way
(tests/simulations/test_compiled.py checks this).

The extensions are written **out of tree**, under
``build/compiled/<key>/lib`` (git-ignored), never next to the sources: the
pure modules stay what every import gets, and the tests that patch module
attributes keep working.  ``<key>`` hashes the Python and mypy versions, the
module list and the source of every compiled module and of every project
module they import (mypyc copies ``Final`` constants across modules), so a
build is reused until one of them changes, and a stale build is never
loaded: after an edit there is simply no build for the new key, and asking
for one says to build.

A run uses the build only when asked (``p2pblog sim run --compiled``, or
``P2PBLOG_COMPILED=1``): `activate` puts a finder first on `sys.meta_path`
that answers the compiled modules' imports with their extension files, and
leaves every other import alone.  It must run before any compiled module is
imported (the command line does it before it imports the simulator), and
it refuses, naming them, when some already are: a run that mixed a pure
`NodeCore` with compiled parts would still be correct, but it would not be
the build that was asked for.

Not compiled (`MODULES` says which are): the simulation's orchestration,
scenario, report and plot modules (run once per run, or once per event with
little work each) and `p2pblog.store` (its time is in SQLite, not Python).
This module imports nothing from the simulator, so the command line can
import it first.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

#: The repository root (the directory that holds the packages).
ROOT: Final = Path(__file__).resolve().parent.parent
#: The project's packages: the imports a build's key follows (`dependencies`).
PACKAGES: Final = ("dht", "gossip", "identity", "p2pblog", "simulations")
#: Where builds go, one directory per key; `build/` is git-ignored.
BUILD_ROOT: Final = ROOT / "build" / "compiled"
#: The file in a build directory that lists what it holds (written last: a build without it is partial).
MANIFEST: Final = "manifest.json"
#: The environment variable that asks the command line for the compiled build ("1", "true", "yes").
ENV_VAR: Final = "P2PBLOG_COMPILED"

#: The modules the full build compiles: the hot ones of a 200-node ``baseline`` profile (see docs/design.md,
#: "Simulator at scale: the compiled build").
MODULES: Final[tuple[str, ...]] = (
    "dht.core",
    "dht.ids",
    "dht.lookup",
    "dht.providers",
    "dht.queries",
    "dht.ratelimit",
    "dht.records",
    "dht.routing",
    "dht.rpc",
    "dht.wire",
    "gossip.mentions",
    "gossip.messages",
    "gossip.noise",
    "gossip.session",
    "gossip.transport",
    "identity.records",
    "p2pblog.dialing",
    "p2pblog.dms",
    "p2pblog.hashtags",
    "p2pblog.mentions",
    "p2pblog.node",
    "p2pblog.own_records",
    "p2pblog.record_rules",
    "p2pblog.replication",
    "p2pblog.track",
    "simulations.endpoint",
    "simulations.engine",
    "simulations.network",
)


class BuildError(RuntimeError):
    """The compiled build could not be made or used (no compiler, no build for these sources, ...)."""


def source_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _first_party(name: str) -> Path | None:
    """The source file of a module of this project (a package's ``__init__.py``), if it is one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    module = source_path(name)
    package = ROOT.joinpath(*name.split("."), "__init__.py")
    return module if module.exists() else package if package.exists() else None


def dependencies(modules: Sequence[str]) -> list[Path]:
    """The sources a build of modules depends on: theirs and every project module they import, transitively.

    mypyc compiles against the types of what a module imports, and copies
    the values of ``Final`` constants from it, so an edit to any of these
    makes a build stale, not only an edit to a compiled module.
    """
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = _first_party(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        todo += [name.rsplit(".", 1)[0]] if "." in name else []
    return [seen[name] for name in sorted(seen)]


def build_key(modules: Sequence[str]) -> str:
    """A hash of everything a build depends on: interpreter, mypy, module list, `dependencies`."""
    try:
        import mypy.version
    except ImportError:
        raise BuildError("the compiled build needs mypy, whose compiler mypyc is: pip install mypy") from None

    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{mypy.version.__version__}\0{sorted(modules)}\0".encode())
    for path in dependencies(modules):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def build_dir(modules: Sequence[str] = MODULES, root: Path = BUILD_ROOT) -> Path:
    """The directory a build of these modules (as their sources are now) lives in."""
    return root / build_key(modules)


def check_toolchain() -> None:
    """Raise `BuildError` naming what is missing: a C compiler, Python's headers, setuptools, mypyc."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise BuildError(f"no C compiler: {compiler!r} (the compiler Python was built with) is not on PATH")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise BuildError(f"no Python headers: {include} is missing (install the python3-dev package)")
    for module in ("setuptools", "mypyc.build"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise BuildError(f"{module} is not installed (pip install mypy setuptools)")


def build(modules: Sequence[str] = MODULES, root: Path = BUILD_ROOT, *, verbose: bool = False) -> Path:
    """Compile modules into ``root/<key>`` unless that build exists; return its directory.

    The compiler runs in a child process (mypyc loads all of mypy, and
    setuptools changes directory), in a scratch directory renamed into place
    at the end, so two builds at once (test workers) never see half a build.
    """
    target = build_dir(modules, root)
    if (target / MANIFEST).exists():
        return target
    check_toolchain()
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f"{target.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    paths = [str(source_path(module).relative_to(ROOT)) for module in modules]
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, str(scratch), *paths],
        cwd=ROOT,
        capture_output=not verbose,
        text=True,
    )
    if child.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        output = "" if verbose else (child.stdout + child.stderr)[-4000:]
        raise BuildError(f"mypyc failed (exit status {child.returncode}):\n{output}")
    listed = sorted(modules)
    manifest = {"key": target.name, "modules": listed, "seconds": round(time.monotonic() - started, 1)}
    for intermediate in ("c", "tmp"):  # the generated C and the objects: 35 MB the imports never read
        shutil.rmtree(scratch / intermediate)
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        scratch.rename(target)
    except OSError:  # another process finished the same build first: use its copy
        shutil.rmtree(scratch, ignore_errors=True)
    _remove_stale(root, listed, keep=target)
    return target


def _remove_stale(root: Path, modules: list[str], keep: Path) -> None:
    """Delete the other builds of the same modules: their sources have changed since."""
    for manifest in root.glob(f"*/{MANIFEST}"):
        if manifest.parent != keep and json.loads(manifest.read_text())["modules"] == modules:
            shutil.rmtree(manifest.parent, ignore_errors=True)


# Runs in the child: mypyc writes its C into <scratch>/c, setuptools its objects into <scratch>/tmp and
# the extension modules into <scratch>/lib.
_BUILD_SCRIPT: Final = """
import sys
from setuptools import Distribution
from mypyc.build import mypycify

scratch, paths = sys.argv[1], sys.argv[2:]
extensions = mypycify(paths, target_dir=scratch + "/c", opt_level="2", group_name="p2pblog_compiled")
dist = Distribution({"name": "p2pblog-compiled", "ext_modules": extensions})
command = dist.get_command_obj("build_ext")
command.build_lib = scratch + "/lib"
command.build_temp = scratch + "/tmp"
command.inplace = False
dist.run_command("build_ext")
"""


class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Answers imports of the modules in one build with its extension files; declines the rest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.extensions = _extensions(directory / "lib")

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        found = self.extensions.get(fullname)
        if found is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(found))
        return importlib.util.spec_from_file_location(fullname, found, loader=loader)


def _extensions(lib: Path) -> dict[str, Path]:
    """Module name -> extension file, for every extension module under lib."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    found: dict[str, Path] = {}
    for file in lib.rglob(f"*{suffix}"):
        relative = file.relative_to(lib)
        found[".".join((*relative.parent.parts, relative.name[: -len(suffix)]))] = file
    return found


def activate(directory: Path | None = None, *, root: Path = BUILD_ROOT) -> Path:
    """Make this process import the compiled modules of a build (default: `MODULES` as they are now).

    Raises `BuildError` when there is no build for the current sources or
    when a compiled module was already imported (pure).
    """
    if directory is None:
        directory = build_dir(MODULES, root)
        if not (directory / MANIFEST).exists():
            raise BuildError(
                "no compiled build for the current sources: run `python -m simulations.compiled build` "
                f"(it writes {directory})"
            )
    manifest = json.loads((directory / MANIFEST).read_text())
    modules: list[str] = manifest["modules"]
    if build_key(modules) != directory.name:
        raise BuildError(
            f"{directory} is stale (its sources changed): run `python -m simulations.compiled build`"
        )
    already = sorted(set(modules) & set(sys.modules))
    if already:
        raise BuildError(f"too late for the compiled build: already imported pure: {', '.join(already)}")
    sys.meta_path.insert(0, _CompiledFinder(directory))
    global _active
    _active = directory
    return directory


#: The build this process imports (`activate`), if any: a sharded run's workers activate it too.
_active: Path | None = None


def active() -> Path | None:
    """The build directory this process imports its compiled modules from, or None (pure)."""
    return _active


def wanted() -> bool:
    """Whether the environment asks for the compiled build (`ENV_VAR` set to 1, true or yes)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.compiled", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser(
        "build", help="compile the hot modules with mypyc (reuses a build of the same sources)"
    )
    make.add_argument("--modules", help="comma-separated modules (default: the full set)")
    make.add_argument("--out", type=Path, default=BUILD_ROOT, help=f"build root (default: {BUILD_ROOT})")
    make.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    modules = tuple(args.modules.split(",")) if args.modules else MODULES
    try:
        directory = build(modules, args.out, verbose=args.verbose)
    except BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    manifest = json.loads((directory / MANIFEST).read_text())
    print(f"{directory} ({len(manifest['modules'])} modules, built in {manifest['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
