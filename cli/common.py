"""Helpers shared by the command modules: the home directory, keys, time, output."""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
import unicodedata
from typing import TYPE_CHECKING, Any, Final

import click

from identity import Identity, PassphraseError, encode_handle
from identity.handle import fingerprint
from identity.keyfile import key_file_is_encrypted, read_public_key
from p2pblog import control
from p2pblog.entry import POST, PROFILE
from p2pblog.home import Home

if TYPE_CHECKING:
    from p2pblog.store import FeedItem

PASSPHRASE_ENV = "P2PBLOG_PASSPHRASE"
LIMIT_HELP = "How many to show, newest first (1 .. 10000)."


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def current_home() -> Home:
    home = click.get_current_context().find_object(Home)
    assert home is not None
    return home


def run_command() -> str:
    """How the user starts the node for this home: ``p2pblog run``, with the ``--home DIR``
    they gave on the command line (a home from $P2PBLOG_HOME is there for the next command too)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        root = ctx.find_root()
        home = root.params.get("home")
        if home is not None and root.get_parameter_source("home") is click.core.ParameterSource.COMMANDLINE:
            return f"p2pblog --home {shlex.quote(str(home))} run"
    return "p2pblog run"


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


#: Unicode general categories never printed raw: controls (Cc), format characters
#: (Cf: zero-width joiners and spaces, bidi marks, embeddings, overrides and isolates,
#: interlinear annotations U+FFF9-FFFB, tag characters U+E0000-E007F, ...), private
#: use (Co), unassigned code points and surrogates (Cn, Cs), and the line and
#: paragraph separators (Zl, Zp).
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
#: Variation selectors (U+FE00-FE0F, U+E0100-E01EF) and combining marks (Mn, Me) kept
#: raw after a visible character: enough for any real script or emoji sequence, too
#: few to stack a "zalgo" tower over other lines.
MAX_MARK_RUN: Final = 4
#: Printed as they are: tab and newline (`shown` keeps a post's lines).
_KEPT: Final = frozenset("\t\n")


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _is_mark(char: str) -> bool:
    code = ord(char)
    return (
        0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or unicodedata.category(char) in ("Mn", "Me")
    )


def shown(text: str) -> str:
    """Other people's text, safe to print to a terminal.

    Posts, names and bios come from authors we follow and, as mentions, from
    strangers: an escape sequence in them could set the window title, write
    the clipboard (OSC 52) or recolour the screen, a bidi override could
    make text read differently from what it is, and an invisible character
    (zero-width, tag, annotation) could hide what a reader would want to
    see.  Every character of `_HIDDEN_CATEGORIES` but tab and newline is
    shown as ``\\uXXXX`` (``\\UXXXXXXXX`` above the BMP), and so is every
    combining mark or variation selector past `MAX_MARK_RUN` in a row (or
    with no visible character before it)."""
    out: list[str] = []
    run = MAX_MARK_RUN  # at the start there is nothing for a mark to combine with
    for char in text:
        if char in _KEPT:
            out.append(char)
            run = MAX_MARK_RUN
        elif unicodedata.category(char) in _HIDDEN_CATEGORIES:
            out.append(_escaped(char))
            run = MAX_MARK_RUN
        elif _is_mark(char):
            run += 1
            out.append(char if run <= MAX_MARK_RUN else _escaped(char))
        else:
            out.append(char)
            run = 0
    return "".join(out)


_LINE_BREAKS = re.compile("[\t\n\x85\u2028\u2029]")


def shown_line(text: str) -> str:
    """`shown`, and line breaks and tabs escaped too: for text printed inside one line
    (a name in a header line could otherwise forge the lines after it)."""
    return _LINE_BREAKS.sub(lambda m: _escaped(m.group()), shown(text))


_MS_PER_DAY: Final = 86_400_000


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar, ``days`` after 1970-01-01.

    Howard Hinnant's ``civil_from_days`` (chrono-Compatible Low-Level Date
    Algorithms): exact integer arithmetic for any int, where `datetime` stops
    at year 9999."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def when(timestamp_ms: int | float) -> str:
    """A Unix time in milliseconds as ``YYYY-MM-DD HH:MM:SS UTC``.

    Total: any integer (an entry may carry any stamp up to 2**53 - 1 ms, and
    stores hold entries accepted before the ingest bound existed) gives a
    date, with as many year digits as it takes; a float that is not finite
    gives ``?``."""
    try:
        ms = int(timestamp_ms)
    except (OverflowError, ValueError):
        return "?"
    days, rest = divmod(ms, _MS_PER_DAY)
    year, month, day = _civil_from_days(days)
    hours, seconds = divmod(rest // 1000, 3600)
    return f"{year:04d}-{month:02d}-{day:02d} {hours:02d}:{seconds // 60:02d}:{seconds % 60:02d} UTC"


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
