"""Test helper: run the real ``p2pblog`` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def p2pblog(
    home: Path | None, *args: str, env: dict[str, str] | None = None, module: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2pblog [--home HOME] ARGS`` (or the console script) and capture output."""
    command = [sys.executable, "-m", "p2pblog"] if module else [str(Path(sys.executable).parent / "p2pblog")]
    if home is not None:
        command += ["--home", str(home)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    full_env.update(env or {})
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=full_env, stdin=subprocess.DEVNULL
    )
