"""Test helper: run the real ``p2pblog`` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The checkout these tests belong to: child processes import p2pblog from here, not from
#: whichever copy the interpreter has installed (an editable install of another worktree).
ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a p2pblog child process: no P2PBLOG_ settings, this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PBLOG_")}
    # Children may cache compiled modules (in the git-ignored __pycache__ folders): with
    # PYTHONDONTWRITEBYTECODE set (as it is on this project's machines) each child process
    # compiled the project's modules again, 0.05-0.1 s of CPU per `p2pblog` command.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def p2pblog(
    home: Path | None,
    *args: str,
    env: dict[str, str] | None = None,
    module: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2pblog [--home HOME] ARGS`` (or the console script) and capture output;
    ``input`` is written to its stdin (else it reads nothing)."""
    command = [sys.executable, "-m", "p2pblog"] if module else [str(Path(sys.executable).parent / "p2pblog")]
    if home is not None:
        command += ["--home", str(home)]
    full_env = child_env(env)
    if input is not None:
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=120, env=full_env, input=input
        )
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=full_env, stdin=subprocess.DEVNULL
    )
