"""How the browser tests and the web benchmark start Debian's chromium (headless, as root,
with nothing that would dial out of this machine)."""

from __future__ import annotations

from typing import Final

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
