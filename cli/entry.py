"""The ``p2pblog`` entry point: Ctrl-C is one line from the very first instant.

Importing the command line takes a few tens of milliseconds; a Ctrl-C in
that window would print a traceback of whatever module was being imported.
`main` first installs a SIGINT handler that says ``stopped`` and exits 0
(nothing has been done yet, so there is nothing to clean up), then imports
`cli.main` and runs it.  `cli.main` puts Python's own handler back when a
command starts (`cli.main.interrupts_raise`), so from then on Ctrl-C is a
`KeyboardInterrupt` that the command shuts down cleanly on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any


def _stopped_early(signum: int, frame: object) -> None:
    del signum, frame
    # `run` and `demo` stop cleanly with 0; any other command was interrupted before it
    # did anything: 130, as a shell reports an interrupted command (never "success").
    running = any(word in ("run", "demo") for word in sys.argv[1:])
    os.write(2, b"stopped\n" if running else b"interrupted\n")
    os._exit(0 if running else 130)


def main(**kwargs: Any) -> None:
    """Run the command line (the console script and ``python -m p2pblog``)."""
    # An inherited "ignore SIGINT" (a background job of a script, nohup) is kept, as Python
    # keeps it: the Ctrl-C is the foreground's.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        with contextlib.suppress(ValueError):  # not the main thread: leave Python's handler
            signal.signal(signal.SIGINT, _stopped_early)
    from cli.main import main as command_line

    command_line(**kwargs)


def early_handler_installed() -> bool:
    """Whether SIGINT still goes to the start-up handler (replaced when a command starts)."""
    return signal.getsignal(signal.SIGINT) is _stopped_early
