"""Helpers shared by the command modules: the home directory, keys, time, output."""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from identity import Identity, PassphraseError, encode_handle
from identity.handle import fingerprint
from identity.keyfile import key_file_is_encrypted, read_public_key
from p2pblog import control
from p2pblog.entry import POST, PROFILE
from p2pblog.home import Home
from p2pblog.store import FeedItem

PASSPHRASE_ENV = "P2PBLOG_PASSPHRASE"
LIMIT_HELP = "How many to show, newest first (1 .. 10000)."


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def current_home() -> Home:
    home = click.get_current_context().find_object(Home)
    assert home is not None
    return home


def passphrase(*, confirm: bool = False) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        what = "a new encrypted key needs a passphrase" if confirm else "the key is encrypted"
        raise PassphraseError(f"{what}: set {PASSPHRASE_ENV} or run in a terminal")
    return str(click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm))


def load_identity(home: Home) -> Identity:
    if home.exists() and key_file_is_encrypted(home.key_file):
        return home.load_identity(passphrase())
    return home.load_identity()


def public_key(home: Home) -> bytes:
    """The own public key, without unlocking an encrypted key file."""
    if not home.exists():
        home.load_identity()  # raises the "no identity" error
    return read_public_key(home.key_file)


#: C0 controls but tab and newline, DEL, C1 controls, and the bidi marks,
#: embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """Other people's text, safe to print to a terminal.

    Posts, names and bios come from authors we follow and, as mentions, from
    strangers: an escape sequence in them could set the window title, write
    the clipboard (OSC 52) or recolour the screen, and a bidi override could
    make text read differently from what it is.  Those characters are shown
    as ``\\uXXXX`` instead."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_LINE_BREAKS = re.compile("[\t\n\x85\u2028\u2029]")


def shown_line(text: str) -> str:
    """`shown`, and line breaks and tabs escaped too: for text printed inside one line
    (a name in a header line could otherwise forge the lines after it)."""
    return _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", shown(text))


def when(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def echo_item(item: FeedItem) -> None:
    e = item.entry
    click.echo(f"[{fingerprint(e.author)} #{e.seq}] {when(e.timestamp)}  {e.kind}  id {e.id.hex()}")
    if item.deleted:
        click.echo("    (deleted by its author)")
    elif e.kind == POST:
        for line in (e.text or "").splitlines() or [""]:
            click.echo(f"    {shown(line)}")
        if e.reply_to:
            click.echo(f"    (reply to {e.reply_to.hex()})")
    elif e.feed is not None:
        click.echo(f"    {e.kind} {encode_handle(e.feed)}")
    elif e.kind == PROFILE:
        click.echo("    " + shown_line(", ".join(f"{k}: {v}" for k, v in e.body.items())))
    elif e.target is not None:
        click.echo(f"    retracts {e.target.hex()}")


def call_if_running(home: Home, command: str, args: dict[str, Any]) -> Any:
    """The node's answer to command, or None when no node runs at home."""
    try:
        return control.call(home.path, command, args)
    except control.NodeNotRunning:
        return None
