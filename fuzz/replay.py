"""Replay inputs through a harness's ``check`` without libFuzzer: for a debugger, a profiler or coverage.py.

Usage::

    python fuzz/replay.py NAME [FILE_OR_DIR ...]

``NAME`` is a harness (``entry``, ``dht_wire``, ...).  Without paths it
replays the harness's seeds and its working corpus ``fuzz/.corpus/NAME``.
Every input runs, in a plain Python process (libFuzzer leaves with
``_exit``, so coverage.py and ``atexit`` never see the end of a fuzzing
run); each failure prints the input's path and traceback, and the exit
status is the number of failures (capped at 100).  Line coverage of what a
corpus reaches, as ``docs/fuzzing.md`` reports it::

    python -m coverage run --include='p2pblog/entry.py' fuzz/replay.py entry
    python -m coverage report -m
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from launch import WORK_CORPUS_DIR, write_seeds


def inputs(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return files


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    name = argv[1]
    harness = importlib.import_module(name)
    paths = [Path(arg) for arg in argv[2:]]
    if not paths:
        paths = [write_seeds(name, harness.seeds()), WORK_CORPUS_DIR / name]
    files = inputs([p for p in paths if p.exists()])
    failures = 0
    for file in files:
        try:
            harness.check(file.read_bytes())
        except Exception:
            failures += 1
            print(f"--- {file}", file=sys.stderr)
            traceback.print_exc()
    print(f"replayed {len(files)} inputs through fuzz/{name}.py: {failures} failed", file=sys.stderr)
    return min(failures, 100)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
