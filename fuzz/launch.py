"""How every harness in ``fuzz/`` starts: the checkout on ``sys.path``, default libFuzzer flags, corpora.

Theory of operation
-------------------
A harness is a module ``fuzz/<name>.py`` with a ``check(data: bytes)``
function (the contract: returns, or raises ``AssertionError`` or any
undeclared exception, which atheris reports as a crash), a ``seeds()``
function (valid inputs to start from) and a ``main()`` that hands both,
and for msgpack inputs a custom mutator (``fuzz/msgpack_mutator.py``), to
`run`.  Every harness goes through the same steps:

1. `use_checkout` puts the checkout that holds this file first on
   ``sys.path``, so a harness fuzzes the code beside it, not whatever copy
   of p2pblog the virtualenv has installed (worktrees share one venv).
2. The harness imports the modules under test inside
   ``atheris.instrument_imports``, naming their packages, so atheris sees
   their branches (and not the standard library's).
3. `run` adds the default flags of `DEFAULT_FLAGS` and the harness's
   ``-max_len`` unless the command line already sets them: every input is
   bounded in size, time (``-timeout``) and memory (``-rss_limit_mb``), so
   "unbounded memory or time" shows up as a libFuzzer crash, not a hung run.
4. `run` writes the harness's seeds, made from the current code's valid
   encodings (so they never go stale), to ``fuzz/.seeds/<name>`` at every
   start and adds that directory after the corpus directories of the
   command line, or after ``fuzz/.corpus/<name>`` when there are none
   (libFuzzer writes the inputs that find new coverage to the first
   directory).  Both are git-ignored; nothing generated is checked in.
   Crash files go to ``fuzz/.crashes/`` unless ``-artifact_prefix`` says
   otherwise.

Any libFuzzer flag works (``-runs=N``, ``-max_total_time=S``, ``-jobs``,
``-dict``, ...), and atheris's own ``-atheris_runs=N``.  A file argument
instead of a directory replays that one input (libFuzzer's reproduce mode).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

FUZZ_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = FUZZ_DIR.parent
SEEDS_DIR: Final = FUZZ_DIR / ".seeds"
WORK_CORPUS_DIR: Final = FUZZ_DIR / ".corpus"
CRASH_DIR: Final = FUZZ_DIR / ".crashes"

#: Flags every harness runs with unless the command line gives its own value.
#: The slowest input (a Noise handshake, then a 1 MiB frame) takes tens of
#: milliseconds, so ten seconds is a hang; 1 GiB is twenty times a harness's peak RSS.
DEFAULT_FLAGS: Final = ("-timeout=10", "-rss_limit_mb=1024")


def use_checkout() -> None:
    """Import p2pblog's packages from this checkout (call before importing them)."""
    root = str(ROOT)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


def write_seeds(name: str, seeds: Iterable[bytes]) -> Path:
    """Replace ``fuzz/.seeds/<name>`` with one file per seed (named by its SHA-1, as libFuzzer does)."""
    directory = SEEDS_DIR / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return directory


def libfuzzer_argv(argv: list[str], name: str, max_len: int, seeds_dir: Path) -> list[str]:
    """``argv`` with the defaults of the module docstring filled in."""
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    flags = [flag for flag in (*DEFAULT_FLAGS, f"-max_len={max_len}") if flag.split("=", 1)[0] not in given]
    if "-artifact_prefix" not in given:
        CRASH_DIR.mkdir(exist_ok=True)
        flags.append(f"-artifact_prefix={CRASH_DIR}/{name}-")
    paths = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    corpora: list[str] = []
    if not paths:
        work = WORK_CORPUS_DIR / name
        work.mkdir(parents=True, exist_ok=True)
        corpora = [str(work), str(seeds_dir)]
    elif all(path.is_dir() for path in paths):
        corpora = [str(seeds_dir)]
    # else: files to replay (reproduce mode); no seeds.
    return [argv[0], *flags, *argv[1:], *corpora]


def run(
    name: str,
    check: Callable[[bytes], None],
    *,
    seeds: Iterable[bytes],
    max_len: int,
    mutator: Callable[[bytes, int, int], bytes] | None = None,
) -> None:
    """Fuzz ``check`` with atheris under the flags and corpora described above.

    ``mutator`` is a custom mutator (``fuzz/msgpack_mutator.py``) for
    harnesses whose input is msgpack.
    """
    import atheris

    argv = libfuzzer_argv(sys.argv, name, max_len, write_seeds(name, seeds))
    atheris.Setup(argv, check, custom_mutator=mutator)
    atheris.Fuzz()
