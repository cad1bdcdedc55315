"""The ``p2pblog`` command line.

Offline commands (init, id, log, timeline, verify, export, import) open the
home directory's key file and store directly.  ``post``, ``follow`` and
``unfollow`` go through the running node when there is one (so it pushes and
replicates at once), else write the store directly.  ``status``, ``lookup``
and ``peers`` need the node.  Output that scripts read (a handle,
an entry id, JSON) goes to stdout; messages for people go to stderr.  Expected
failures print one ``Error: ...`` line and exit 1, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import click

from cli.common import (
    LIMIT_HELP,
    PASSPHRASE_ENV,
    call_if_running,
    current_home,
    echo_item,
    load_identity,
    now_ms,
    public_key,
    run_command,
    shown,
    shown_line,
    when,
)
from identity import KeyFileError, encode_handle
from identity.handle import HandleError, fingerprint
from identity.keys import SIGNATURE_BYTES
from identity.limits import MENTION_WORK
from identity.netaddr import parse_hostport
from p2pblog import control
from p2pblog.entry import (
    FOLLOW,
    PROFILE,
    UNFOLLOW,
    decode_entry,
    entry_to_json,
    parse_entry_id,
    post_body,
    validate_body,
)
from p2pblog.errors import EntryError, P2PBlogError
from p2pblog.feedfile import FeedFileError, read_feed, write_feed
from p2pblog.home import DEFAULT_PORT, DEFAULT_WEB_PORT, DEMO_NAMES, Home, default_home

if TYPE_CHECKING:
    from p2pblog.store import FeedItem, Store

#: How every canonically encoded entry content begins: a 7-element array, format
#: version 1, then the author as a 32-byte bin (`p2pblog.entry.encode_content`).
_CONTENT_HEAD: Final = b"\x97\x01\xc4\x20"
#: Bytes ``import`` reads from the feed file at a time.
_READ_BUFFER: Final = 1 << 20
#: Errors a user can cause: one `Error:` line each, never a traceback (and OSErrors).
_USER_ERRORS = (P2PBlogError, KeyFileError, HandleError)


#: Commands defined in other modules, imported only when one of them runs (or `--help`
#: lists them): `p2pblog sim` loads the simulator, the social commands the search index.
_LAZY_COMMANDS: Final = {
    "sim": "cli.sim",
    "service": "cli.service",
    "dm": "cli.dm",
    "device": "cli.device",
    "followers": "cli.followers",
    "identity": "cli.backup",
    **dict.fromkeys(
        (
            "name",
            "resolve",
            "petname",
            "profile",
            "thread",
            "mentions",
            "search",
            "block",
            "unblock",
            "blocks",
            "delete",
        ),
        "cli.social",
    ),
    **dict.fromkeys(("track", "tracked"), "cli.track"),
}


class _Group(click.Group):
    """Turns the errors users can cause into one clear line and exit status 1; loads the
    commands of `_LAZY_COMMANDS` when they are asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY_COMMANDS:
            import importlib

            module = importlib.import_module(_LAZY_COMMANDS[cmd_name])
            for command in getattr(module, "COMMANDS", ()):
                self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        interrupts_raise()
        try:
            result = super().invoke(ctx)
            _warn_if_damaged(ctx)
            return result
        except (KeyboardInterrupt, BaseExceptionGroup) as exc:
            if not _interrupted(exc):
                raise
            # Ctrl-C: the command has shut down on its way here (stores rolled back and
            # closed, a node's node.json removed): one line, no traceback.  Stopping a node
            # or the demo is how they end, not a failure.
            _forget_interrupt()
            if ctx.invoked_subcommand in _STOPPED_BY_CTRL_C:
                click.echo("stopped", err=True)
                sys.exit(0)
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError as exc:
            if not _stdout_closed():
                raise click.ClickException(_message(exc)) from None  # e.g. the node's socket
            # `p2pblog log | head`: the reader is gone; stop quietly (the Python docs' recipe).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except sqlite3.DatabaseError as exc:
            from p2pblog.store import is_damage, record_damage

            if not is_damage(exc):
                raise
            # A read reached a damaged page: record it, so that no later command writes.
            home = ctx.find_object(Home)
            if home is None:
                raise
            raise click.ClickException(str(record_damage(home.store_file, str(exc)))) from None
        except control.NodeNotRunning as exc:
            raise click.ClickException(exc.explained(run_command())) from None
        except (*_USER_ERRORS, OSError) as exc:
            raise click.ClickException(_message(exc)) from None


#: Commands that run until Ctrl-C: stopping them so exits 0.
_STOPPED_BY_CTRL_C: Final = frozenset({"run", "demo"})


def _warn_if_damaged(ctx: click.Context) -> None:
    """After a command that worked on a store known to be damaged (what it read was readable):
    say so, and what to do, in one line (one `stat` when the store is sound)."""
    home = ctx.find_object(Home)
    if home is None or not Path(f"{home.store_file}.damaged").exists():
        return
    from p2pblog.store import damaged_error, recorded_damage

    reason = recorded_damage(home.store_file)
    if reason is not None:
        click.echo(f"Warning: {damaged_error(home.store_file, reason)}", err=True)


def interrupts_raise() -> None:
    """Give SIGINT back to Python's handler (`KeyboardInterrupt`) once a command starts:
    `cli.entry`'s start-up handler just exits, which is only right before anything is done."""
    from cli.entry import early_handler_installed

    if early_handler_installed():  # (not when SIGINT was ignored: `cli.entry` kept that)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _forget_interrupt() -> None:
    """Make a handled Ctrl-C exit with our status, not by SIGINT.

    Under ``python -m``, CPython (3.11, 3.12) ends the process with SIGINT
    (status -2) if a KeyboardInterrupt ever escaped code run from a string
    (``exec(str)``, as `dataclasses` and `collections.namedtuple` do while a
    module is imported), even when a caller caught it: that sets
    ``_PyRuntime.signals.unhandled_keyboard_interrupt``, which only the start
    of the next string evaluation resets.  This is that evaluation."""
    exec("pass", {})


def _interrupted(exc: BaseException) -> bool:
    """Whether exc is Ctrl-C: a KeyboardInterrupt, or trio's group of them."""
    leaves = _leaves(exc)
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves) and all(
        isinstance(leaf, KeyboardInterrupt) or type(leaf).__name__ == "Cancelled" for leaf in leaves
    )


def _stdout_closed() -> bool:
    """Whether nobody reads our stdout any more (a pipe whose reader exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno (captured), no poll (not POSIX)
        return False


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _message(exc: BaseException) -> str:
    if _disk_full(exc):
        assert isinstance(exc, OSError)
        where = f": {exc.filename}" if exc.filename else ""
        return f"the disk is full: {exc.strerror or exc}{where}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc) or type(exc).__name__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="P2PBLOG_HOME",
    help="The node's data directory (key file and store). "
    "Default: $P2PBLOG_HOME, else the platform's user data directory.",
)
@click.version_option(package_name="p2pblog")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """p2pblog: a peer-to-peer microblogging node.

    Every node keeps a signed, hash-chained log of its owner's posts.  Start
    with `p2pblog init` and `p2pblog run`, then `p2pblog follow HANDLE`,
    `p2pblog post TEXT` and `p2pblog timeline`.  `p2pblog demo` shows a small
    live network on this machine.
    """
    ctx.obj = Home(home if home is not None else default_home())


def resolve_target(text: str, home: Home) -> bytes:
    """`cli.social.resolve_target` (imported when a command names a feed)."""
    from cli.social import resolve_target as resolve

    return resolve(text, home)


def _feed_key(handle: str | None, home: Home) -> bytes:
    """Your own key, or the one a handle, petname or name names (`resolve_target`)."""
    return public_key(home) if handle is None else resolve_target(handle, home)


def _items_json(items: list[FeedItem]) -> str:
    return json.dumps([entry_to_json(i.entry, retracted=i.deleted) for i in items], indent=2)


# --- commands ---------------------------------------------------------------------


@main.command()
@click.option("--name", help="A display name, recorded as the first (profile) entry of the feed.")
@click.option(
    "--encrypt",
    is_flag=True,
    help=f"Protect the key with a passphrase (prompted, or ${PASSPHRASE_ENV}).",
)
@click.option(
    "--confirm/--no-confirm",
    default=None,
    help="Ask for words of the backup phrase before writing anything (default: when stdin is a terminal).",
)
@click.option(
    "--restore",
    is_flag=True,
    help="Restore an identity from its backup phrase (prompted, hidden; or read from stdin) "
    "or --key-file, into a fresh home.",
)
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --restore: an identity.key from a backup (encrypted or not).",
)
def init(name: str | None, encrypt: bool, confirm: bool | None, restore: bool, key_file: Path | None) -> None:
    """Create this node's identity and store, show its backup phrase, and print its handle.

    The phrase (24 words, on stderr) is the key: write it down.  With
    --restore, bring back an identity from its phrase or a key file; the node
    then catches up with the identity's feed before it lets you post.
    Refuses if the home directory already has an identity.
    """
    from cli import backup

    home = current_home()
    if key_file is not None and not restore:
        raise click.UsageError("--key-file goes with --restore")
    if restore:
        if name is not None:
            raise click.UsageError("--name cannot go with --restore (a restored feed has its profile)")
        identity, secret = backup.restored_identity(home, key_file, encrypt)
        home.create(identity, secret, restored=True)
        backup.restored_message(home, identity)
        click.echo(identity.handle)
        return
    if name is not None:
        validate_body(PROFILE, {"name": name})  # before anything is written
    identity, secret, asked = backup.new_identity(home, encrypt, confirm)
    home.create(identity, secret)
    if not asked:
        backup.shown_unasked(identity, confirm)
    if name is not None:
        with home.open_store() as store:
            store.append(identity, PROFILE, {"name": name}, now_ms())
    click.echo(f"Created identity in {home.path} (fingerprint {identity.fingerprint})", err=True)
    click.echo(identity.handle)


@main.command("id")
@click.option("--json", "as_json", is_flag=True, help="Print handle, fingerprint and home as JSON.")
def id_(as_json: bool) -> None:
    """Print this node's own handle: the identity's, on a device paired with one
    (`p2pblog device`); `--json` then also names the device's own key."""
    home = current_home()
    key = public_key(home)
    identity = _paired_identity(home) or key
    if as_json:
        doc = {
            "handle": encode_handle(identity),
            "fingerprint": fingerprint(identity),
            "home": str(home.path),
        }
        if identity != key:
            doc["device"] = encode_handle(key)
        click.echo(json.dumps(doc))
    else:
        click.echo(encode_handle(identity))


def _paired_identity(home: Home) -> bytes | None:
    """The identity this device paired with (a store setting), read without loading the
    store module: `id` is on the start-up fast path (benchmarks/bench_cli.py)."""
    import sqlite3

    if not home.store_file.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{home.store_file}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM settings WHERE key = 'device.identity'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    value = row[0] if row else ""
    value = value.decode() if isinstance(value, bytes) else str(value or "")
    try:
        return bytes.fromhex(value) if len(value) == 64 else None
    except ValueError:
        return None


@main.command()
@click.argument("words", nargs=-1, required=True, metavar="TEXT...")
@click.option("--reply-to", "reply_to", metavar="ENTRY_ID", help="Id of the post this replies to.")
@click.option("--force", is_flag=True, help="Reply to an ENTRY_ID that is not held here (it is not checked).")
def post(words: tuple[str, ...], reply_to: str | None, force: bool) -> None:
    """Append a signed post to the own feed and print its entry id.

    The words of TEXT are joined by single spaces, so `p2pblog post hello
    world` posts "hello world" (quote TEXT to keep line breaks or several
    spaces).  With the node running, the node signs it and pushes it to
    online followers at once.  With no node running it is stored and goes
    out when the node next starts.  @handles in TEXT become mentions.

    --reply-to takes the id of a post held here (`p2pblog timeline --json`,
    `thread`); an id that is not held (a typo, a post not yet received) is
    refused unless --force.
    """
    text = " ".join(words)
    home = current_home()
    parent = None
    if reply_to is not None:
        try:
            parent = parse_entry_id(reply_to)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--reply-to") from None
    post_body(text, parent)  # a bad mention is reported before anything is sent
    if parent is not None and not force:
        with home.open_store() as store:
            held = store.has_entry(parent)
        if not held:
            raise click.ClickException(
                f"--reply-to {reply_to}: no post with that id is held here (a typo? a post not "
                "received yet?); check it with `p2pblog thread ID`, or give --force to reply anyway"
            )
    live = call_if_running(home, "post", {"text": text, "reply_to": reply_to})
    if live is not None:
        peers = live.get("peers", 0)
        where = "no connected peer replicates your feed: followers catch up later"
        if peers:
            where = f"sent to {peers} connected peer(s) that replicate your feed"
        click.echo(f"Posted #{live['seq']} ({where})", err=True)
        click.echo(live["id"])
        return
    identity = load_identity(home)
    with home.open_store() as store:
        from p2pblog import actions

        entry = actions.post(store, identity, text, now_ms(), reply_to=parent)
    to_notify = [k for k in entry.mentions if k != identity.public_key]
    notices = f"; {len(to_notify)} mention notice(s) go out when the node runs" if to_notify else ""
    click.echo(f"Posted #{entry.seq}{notices}", err=True)
    click.echo(entry.id.hex())


@main.command()
@click.argument("handle", metavar="HANDLE|NAME")
def follow(handle: str) -> None:
    """Follow HANDLE: record a signed follow entry and replicate its feed.

    Instead of a handle you may give a petname, NAME~FINGERPRINT, or a NAME
    claimed in the DHT (node running).  A NAME that several keys claim is
    not guessed: the claimants are listed, pick one with NAME~FINGERPRINT.

    With the node running it starts looking for the feed at once;
    otherwise the entry is stored and the node replicates the feed when it
    starts.
    """
    _follow_command(handle, FOLLOW)


@main.command()
@click.argument("handle", metavar="HANDLE|NAME")
def unfollow(handle: str) -> None:
    """Stop following HANDLE: record a signed unfollow entry, stop replicating its feed.

    Entries of HANDLE already stored are kept.
    """
    _follow_command(handle, UNFOLLOW)


def _follow_command(handle: str, kind: str) -> None:
    home = current_home()
    key = resolve_target(handle, home)
    if key == public_key(home):
        raise click.ClickException("that is your own handle")
    if kind == FOLLOW:
        with home.open_store() as store:
            if any(blocked == key for blocked, _ in store.blocks()):
                raise click.ClickException(f"{encode_handle(key)} is blocked: `p2pblog unblock` it first")
    verb = "follow" if kind == FOLLOW else "unfollow"
    live = call_if_running(home, verb, {"handle": encode_handle(key)})
    if live is None:
        with home.open_store() as store:
            following = key in store.following(public_key(home))
            if following == (kind == FOLLOW):
                changed = False
            else:
                store.append(load_identity(home), kind, {"feed": key}, now_ms())
                changed = True
    else:
        changed = bool(live["changed"])
    name = encode_handle(key)
    if not changed:
        click.echo(f"already {'following' if kind == FOLLOW else 'not following'} {name}", err=True)
    elif kind == FOLLOW:
        where = "replicating now" if live is not None else "the node replicates it when it starts"
        click.echo(f"following {name} ({where})", err=True)
    else:
        click.echo(f"unfollowed {name}", err=True)


@main.command()
@click.option(
    "--limit", "-n", type=click.IntRange(min=1, max=10_000), default=20, show_default=True, help=LIMIT_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of posts, newest first.")
@click.option(
    "--follow",
    "-f",
    "follow_",
    is_flag=True,
    help="Keep running and print new posts as they arrive (oldest first, like `tail -f`; "
    "with --json one JSON object per line). Ctrl-C stops.",
)
def timeline(limit: int, as_json: bool, follow_: bool) -> None:
    """Show your posts and the posts of feeds you follow, newest first.

    Reads the local store, so it works with or without the node running;
    with the node running, what it has received so far is there (run it
    again for newer posts, or use --follow).  JSON fields: id,
    author (handle), seq, timestamp (ms), text, reply_to, mentions, ...
    """
    home = current_home()
    own = public_key(home)
    with home.open_store() as store:
        items = store.timeline(own, limit=limit)
        names = _authors(store, {i.entry.author for i in items})
    if follow_:
        _follow_timeline(home, own, items[::-1], names, as_json)
        return
    if as_json:
        click.echo(json.dumps([_timeline_doc(item, names) for item in items], indent=2))
        return
    if not items:
        click.echo("No posts yet: post something, or follow someone with `p2pblog follow HANDLE`.", err=True)
    for item in items:
        _echo_timeline_item(item, names)


#: Seconds between two looks at the store by `timeline --follow`, and the newest posts it
#: compares each time (a post that arrives older than all of them is not printed).
_FOLLOW_EVERY: Final = 0.25
_FOLLOW_WINDOW: Final = 200


def _follow_timeline(
    home: Home, own: bytes, shown: list[FeedItem], names: dict[bytes, tuple[bytes, str | None]], as_json: bool
) -> None:
    """Print shown (oldest first), then each post that enters the timeline, until Ctrl-C."""
    seen: set[bytes] = set()

    def emit(item: FeedItem) -> None:
        seen.add(item.entry.id)
        if as_json:
            click.echo(json.dumps(_timeline_doc(item, names)))
        else:
            _echo_timeline_item(item, names)

    for item in shown:
        emit(item)
    if not as_json:
        click.echo("(waiting for new posts; Ctrl-C stops)", err=True)
    try:
        with home.open_store() as store:
            while True:
                time.sleep(_FOLLOW_EVERY)
                fresh = [i for i in store.timeline(own, limit=_FOLLOW_WINDOW) if i.entry.id not in seen]
                for item in fresh[::-1]:
                    if item.entry.author not in names:
                        names.update(_authors(store, {item.entry.author}))
                    emit(item)
                if len(seen) > 4 * _FOLLOW_WINDOW:
                    seen = {i.entry.id for i in store.timeline(own, limit=_FOLLOW_WINDOW)}
    except KeyboardInterrupt:
        pass


def _authors(store: Store, authors: set[bytes]) -> dict[bytes, tuple[bytes, str | None]]:
    """Each author's identity (a device's is its identity's: `p2pblog.devices`) and name."""
    out = {}
    for author in authors:
        identity = store.identity_of(author)
        out[author] = (identity, store.profile(identity).get("name"))
    return out


def _timeline_doc(item: FeedItem, names: dict[bytes, tuple[bytes, str | None]]) -> dict[str, Any]:
    doc = entry_to_json(item.entry, retracted=item.deleted)
    identity, name = names.get(item.entry.author, (item.entry.author, None))
    doc["time"] = when(item.entry.timestamp)
    doc["name"] = name
    if identity != item.entry.author:
        doc["author"], doc["device"] = encode_handle(identity), encode_handle(item.entry.author)
    return doc


def _echo_timeline_item(item: FeedItem, names: dict[bytes, tuple[bytes, str | None]]) -> None:
    e = item.entry
    identity, name = names.get(e.author, (e.author, None))
    who = f"{shown_line(name)} ({fingerprint(identity)})" if name else encode_handle(identity)
    click.echo(f"{who}  {when(e.timestamp)}  #{e.seq}")
    if item.deleted:
        click.echo("    (deleted by its author)")
    else:
        for line in (e.text or "").splitlines() or [""]:
            click.echo(f"    {shown(line)}")
    if e.reply_to:
        click.echo(f"    (reply to {e.reply_to.hex()})")


@main.command()
@click.argument("handle", required=False)
@click.option(
    "--limit", "-n", type=click.IntRange(min=1, max=10_000), default=20, show_default=True, help=LIMIT_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of entries.")
def log(handle: str | None, limit: int, as_json: bool) -> None:
    """Show a feed from the local store, newest first (default: your own).

    HANDLE may also be a petname, NAME~FINGERPRINT or a claimed NAME, as for `follow`.
    """
    home = current_home()
    key = _feed_key(handle, home)
    with home.open_store() as store:
        items = store.feed(key, limit=limit)
        forked = store.feed_state(key).forked_seq
    if as_json:
        click.echo(_items_json(items))
        return
    if not items:
        click.echo(f"No entries of {encode_handle(key)} in the local store.", err=True)
    if forked is not None:
        click.echo(f"Warning: this feed is forked at seq {forked}.", err=True)
    for item in items:
        echo_item(item)


@main.command()
@click.argument("handle", required=False)
def verify(handle: str | None) -> None:
    """Re-verify every stored entry (signature, seq, hash chain).

    Checks one feed if HANDLE (or a petname, NAME~FINGERPRINT) is given, else
    all.  Exits 1 if anything is wrong.
    """
    home = current_home()
    key = None if handle is None else resolve_target(handle, home)
    with home.open_store() as store:
        report = store.verify(key)
        damaged = store.damaged
    if key is not None and report.entries == 0 and damaged is None:
        raise click.ClickException(f"no entries of {encode_handle(key)} are stored here: nothing to verify")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    click.echo(f"verified {report.entries} entries in {report.feeds} feed(s): {status}")
    if damaged is not None:
        from p2pblog.store import damaged_error

        raise click.ClickException(str(damaged_error(home.store_file, damaged)))
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("handle")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--atom",
    is_flag=True,
    help="Write an Atom 1.0 feed of the posts (for feed readers) instead of the signed entries.",
)
def export(handle: str, file: Path, atom: bool) -> None:
    """Write a feed's signed entries to FILE (for backup or hand-carrying).

    HANDLE may also be a petname or NAME~FINGERPRINT.  With --atom, FILE is
    an Atom 1.0 feed of the newest posts instead, with the same entry ids
    at every export (so feed readers show each post once) and replies
    linked; the running web app serves the same feed at
    /feeds/HANDLE.atom.
    """
    home = current_home()
    key = resolve_target(handle, home)
    with home.open_store() as store:
        if store.latest_seq(key) == 0:
            raise click.ClickException(f"no entries of {encode_handle(key)} in the local store")
        if atom:
            from web.atom import write_atom  # stdlib XML only; not the web server

            write_atom(store, key, file)
            click.echo(f"exported the Atom feed of {encode_handle(key)} to {file}")
            return
        latest = store.latest_seq(key)
        tmp = file.with_name(file.name + ".part")
        with tmp.open("wb") as out:
            count = write_feed(out, _readable_entries(store, key))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(file)
        damaged = store.damaged
    click.echo(f"exported {count} entries of {encode_handle(key)} to {file}")
    if count < latest and damaged is not None:
        raise click.ClickException(
            f"the store is damaged: saved entries 1..{count} of {latest} (a feed file must be a "
            f"chain, so it ends before the first unreadable entry); followers of the feed hold the rest"
        )


def _readable_entries(store: Store, key: bytes) -> Iterator[bytes]:
    """A feed's entries in seq order, as far as they can be read: on a damaged store the scan
    stops at a damaged page, and entries are then read one by one until one cannot be."""
    from p2pblog.store import is_damage

    seq = 0
    try:
        for entry in store.feed_range(key, 1):
            seq = entry.seq
            yield entry.raw
        return
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        store.found_damage(exc)
    while True:
        try:
            found = next(store.feed_range(key, seq + 1, seq + 1), None)
        except sqlite3.DatabaseError:
            return
        if found is None:
            return
        seq = found.seq
        yield found.raw


class _Progress:
    """A line on the terminal (stderr) that says how far a long import got."""

    #: Seconds before the first line, and between two.
    EVERY = 0.5

    def __init__(self, size: int) -> None:
        self.size = max(size, 1)
        self.due = time.monotonic() + self.EVERY
        self.shown = False

    def show(self, entries: int, offset: int) -> None:
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.EVERY
        self.shown = True
        # The count is of entries read: the store works at most a few chunks behind it.
        click.echo(f"\rimporting: {entries:,} entries read ({offset / self.size:.0%})", nl=False, err=True)

    def done(self) -> None:
        if self.shown:
            click.echo("\r\033[K", nl=False, err=True)


def _refuse_another_version_of_own_feed(home: Home, store: Store, source: BinaryIO) -> None:
    """Stop an import that would fork our own feed (an older copy of this identity
    that posted elsewhere): a forked own feed can no longer be extended."""
    own = public_key(home)
    latest = store.latest_seq(own)
    if latest == 0:
        return
    # An entry of our feed starts, canonically encoded, with these bytes after its
    # signature; any other entry is someone else's (or fails to decode): skip it
    # without decoding, so this pass costs little beside the import itself.
    ours = _CONTENT_HEAD + own
    try:
        for raw in read_feed(source):
            if raw[SIGNATURE_BYTES : SIGNATURE_BYTES + len(ours)] != ours:
                continue
            try:
                entry = decode_entry(raw, check_signature=False)
            except EntryError:
                continue  # the import itself reports it
            if entry.author != own or entry.seq > latest:
                continue
            held = next(store.feed_range(own, entry.seq, entry.seq), None)
            if held is None or held.id == entry.id:
                continue
            try:
                decode_entry(raw)  # signature checked: a forgery is not another version
            except EntryError:
                continue
            raise click.ClickException(
                f"the file holds a different entry of your own feed at seq {entry.seq}: a copy of "
                "this identity posted elsewhere. Importing it would mark your feed forked, and "
                "a forked feed cannot be extended. Nothing was imported."
            )
    except FeedFileError:
        return  # the import itself reports it


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_(file: Path) -> None:
    """Verify and store the entries of a feed file.

    The valid contiguous prefix is stored; the rest is refused with the reason
    and a non-zero exit.
    """
    home = current_home()
    file_error: list[FeedFileError] = []
    progress = _Progress(file.stat().st_size) if sys.stderr.isatty() else None

    def frames(source: BinaryIO) -> Iterator[bytes]:
        try:
            if progress is None:
                yield from read_feed(source)
                return
            for count, raw in enumerate(read_feed(source), 1):
                if not count % 1024:
                    progress.show(count, source.tell())
                yield raw
        except FeedFileError as exc:
            file_error.append(exc)

    # Verifier processes, not the store's threads: this thread decodes and writes, and
    # threads would have to win the GIL back from it after every signature (measured:
    # 20,000 entries in 0.70 s against 0.83 s).  ``fork`` is safe while this process has
    # no other thread, and costs milliseconds where spawning costs 0.2 s.
    from concurrent.futures.process import BrokenProcessPool

    from p2pblog.verify import VerifyProcesses  # worker processes: only for `import`

    pool = VerifyProcesses(start="fork" if threading.active_count() == 1 else "spawn")
    with home.open_store(verify_pool=pool) as store:
        with file.open("rb") as source:
            _refuse_another_version_of_own_feed(home, store, source)
        own = public_key(home)
        own_before = store.latest_seq(own)
        # A large buffer: a refill releases the GIL, and each time this thread must win it
        # back from the verifier threads (measured: 0.5 s of 4 s with 8 KiB refills).
        with file.open("rb", buffering=_READ_BUFFER) as stream:
            try:
                report = store.ingest_many(frames(stream), now_ms=int(time.time() * 1000))
            except BrokenProcessPool:
                raise click.ClickException(
                    "a signature-checking process died (out of memory?); what was stored so far "
                    "is kept; run the same import again to go on"
                ) from None
            finally:
                pool.close()
                if progress is not None:
                    progress.done()
        if store.latest_seq(own) > own_before and not store.head_known(own):
            # A backup of our own feed: its head is what it holds (`p2pblog.own_head`).
            store.mark_head_known(own)
            click.echo(
                f"your feed's head is now known (#{store.latest_seq(own)}): posting is possible", err=True
            )
    if report.accepted or report.duplicates or not file_error:
        counts = f"{report.accepted} new entries ({report.duplicates} already present)"
        click.echo(f"imported {counts} from {file}")
    failed = False
    for author, seq in report.fork_seqs:
        click.echo(
            f"Error: fork: {encode_handle(author)} signed two entries with seq {seq}; "
            "both kept as proof, the feed is marked forked",
            err=True,
        )
        failed = True
    if report.error is not None:
        click.echo(
            f"Error: refused {report.refused} entries from entry {(report.error_index or 0) + 1} "
            f"on: {shown(str(report.error))}",
            err=True,
        )
        failed = True
    if file_error:
        click.echo(f"Error: {file_error[0]}", err=True)
        failed = True
    if failed:
        sys.exit(1)


@main.command()
@click.option(
    "--nodes",
    type=click.IntRange(2, len(DEMO_NAMES)),
    default=3,
    show_default=True,
    help="How many nodes to run.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
def demo(nodes: int, duration: float | None) -> None:
    """Run a small live p2pblog network on 127.0.0.1 and watch posts travel.

    Starts NODES real nodes (UDP for the DHT, Noise-encrypted TCP for gossip,
    an SQLite store each) in a throw-away directory, joins them, has
    everyone follow everyone, and then has them post in turn.  Every post is
    printed when posted and again at each node it reaches, with the delay.
    Ctrl-C stops everything and removes the directory.
    """
    from p2pblog.demo import run_demo  # the node's modules: only for the commands that run one

    if run_demo(nodes, duration, click.echo, front_end=_demo_web):
        click.echo("stopped", err=True)


async def _demo_web(service: Any, nursery: Any) -> str | None:
    """The demo's first node serves the web app (127.0.0.1:7711, or a free port if that is
    taken), and the demo prints a sign-in link to watch its timeline live in a browser."""
    from p2pblog.errors import ListenError
    from web.server import serve_web

    for port in (DEFAULT_WEB_PORT, 0):
        try:
            app = await nursery.start(serve_web, service, "127.0.0.1", port)
        except ListenError:
            continue
        url = app.login_link()
        return f"         watch its timeline live in a browser (a one-time sign-in link): {url}"
    return None


# --- the running node -------------------------------------------------------------


def _hostport(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    del ctx
    try:
        if isinstance(value, tuple):
            return [parse_hostport(v) for v in value]
        return None if value is None else parse_hostport(value, default_host="0.0.0.0")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _advertise_host(value: str, param: click.Parameter) -> str:
    """--advertise: the host other nodes dial (`p2pblog.config.parse_advertise`)."""
    from p2pblog.config import parse_advertise

    try:
        return parse_advertise(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@main.command()
@click.option(
    "--listen",
    default=f"0.0.0.0:{DEFAULT_PORT}",
    show_default=True,
    callback=_hostport,
    metavar="HOST:PORT",
    help="Address to listen on: UDP for the DHT and TCP for gossip, same port (port 0 picks a free one).",
)
@click.option(
    "--bootstrap",
    multiple=True,
    callback=_hostport,
    metavar="HOST:PORT",
    help="A node to join the network through (repeatable). Not needed after the first run: "
    "the routing table is saved in the store.",
)
@click.option(
    "--advertise",
    metavar="HOST",
    callback=lambda ctx, param, value: None if value is None else _advertise_host(value, param),
    help="The address other nodes should use to reach this one "
    "(default: the listen address, or the local address towards the bootstrap node).",
)
@click.option(
    "--mention-work",
    type=click.IntRange(0, 32),
    default=MENTION_WORK,
    show_default=True,
    help="Proof-of-work bits a mention notice must carry when its author is neither followed "
    "nor within two follow hops (0 admits every stranger's mention).",
)
@click.option(
    "--web",
    "web",
    default=f"127.0.0.1:{DEFAULT_WEB_PORT}",
    show_default=True,
    metavar="HOST:PORT",
    help="Serve the web app here (`p2pblog open` signs you in). If the default port is taken, "
    "the node runs without it and says so; a --web given explicitly must be free.",
)
@click.option("--no-web", is_flag=True, help="Do not serve the web app.")
@click.option(
    "--no-port-mapping",
    is_flag=True,
    help="Do not ask the home router (UPnP IGD) to forward the listen port to this node.",
)
@click.option(
    "--no-relay",
    is_flag=True,
    help="Do not relay connections for nodes nobody can dial (a reachable node relays a few, "
    "rate- and size-limited, by default).",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the settings the node would run with (HOME/p2pblog.toml, then these options), "
    "with where each comes from, and exit.",
)
@click.option(
    "--strict",
    is_flag=True,
    hidden=True,
    envvar="P2PBLOG_STRICT",
    help="Stop on the first internal error instead of counting it (for tests).",
)
@click.option(
    "--keyevent-poll",
    type=click.FloatRange(min=1.0),
    default=None,
    hidden=True,
    envvar="P2PBLOG_KEYEVENT_POLL",
    help="Seconds between lookups of followed identities' root rotations (for tests; default 5 minutes).",
)
@click.option(
    "--peer-republish",
    type=click.FloatRange(min=1.0),
    default=None,
    hidden=True,
    envvar="P2PBLOG_PEER_REPUBLISH",
    help="Seconds between re-signings of the peer record (for tests; default 30 minutes).",
)
@click.pass_context
def run(
    ctx: click.Context,
    listen: tuple[str, int],
    bootstrap: list[tuple[str, int]],
    advertise: str | None,
    mention_work: int,
    web: str,
    no_web: bool,
    no_port_mapping: bool,
    no_relay: bool,
    print_config: bool,
    strict: bool,
    peer_republish: float | None,
    keyevent_poll: float | None,
) -> None:
    """Run the node in the foreground until Ctrl-C or SIGTERM.

    Joins the Kademlia DHT, publishes this node's signed peer record and
    name claims, replicates the feeds it follows over Noise-encrypted TCP
    (catching up on start, then live), pushes its own posts to followers,
    delivers and admits mention notices, and serves the local control API
    used by `post`, `follow`, `status`, `resolve`, `block`, ...

    Mention notices from people you do not follow are admitted when their
    author is followed by someone you follow, or when they carry
    --mention-work bits of proof of work; blocked keys are always refused,
    and each sender may send about 10 per minute.

    No input stops the node: a failure while handling one (a bug) is
    counted in `status`, logged with its traceback, and the node goes on.
    On a full disk the node stays up read-only (`status` says so); it exits
    with one line only if it cannot write HOME/node.json.

    Behind a home router, the node asks the router to forward its port
    (UPnP IGD; --no-port-mapping turns it off) and asks peers to dial it back
    to learn whether it is reachable.  If it is not, it runs in client mode
    (no address advertised, no DHT requests served) and reserves a relay on
    a reachable peer, which its records name instead; reachable nodes relay
    for a few such nodes unless --no-relay.

    The web app (timeline, posting, search, the node page) is served on
    127.0.0.1:7711 unless --no-web; only this machine can reach it, and only
    a browser signed in with `p2pblog open`.
    """
    home = current_home()
    settings = _run_settings(ctx, home, listen, bootstrap, advertise, mention_work, web, no_web)
    if print_config:
        _print_settings(settings, home)
        return
    listen, advertise, mention_work = settings.listen, settings.advertise, settings.mention_work
    bootstrap = list(settings.bootstrap)
    web_addr = settings.web
    # A web address given on the command line or in the file must be free; the default's
    # port may be taken (another node's web app): the node then runs without one.
    web_explicit = settings.source("web") != "default"
    try:
        running = control.call(home.path, "status", timeout=5)
    except control.NodeNotRunning:
        running = None
    except control.ControlError:
        running = {}  # something answers on the recorded port but not as our node
    if running is not None:
        raise click.ClickException(f"a node is already running at {home.path} ({running.get('handle', '?')})")
    identity = load_identity(home)
    with home.open_store() as store:  # a damaged store is not run: the node writes all the time
        if store.damaged is None and store.check_integrity():
            assert store.damaged is not None
        if store.damaged is not None:
            from p2pblog.store import damaged_error

            raise damaged_error(home.store_file, store.damaged)
    import trio  # the node's modules: only for the commands that run one

    from p2pblog.daemon import NodeService, log

    _log_through(log)

    service = NodeService(
        home,
        identity,
        listen=listen,
        bootstrap=bootstrap,
        advertise=advertise,
        mention_work=mention_work,
        strict=strict,
        port_mapping=not no_port_mapping,
    )
    service.relay = not no_relay
    if peer_republish is not None:
        service.peer_republish = peer_republish
    if keyevent_poll is not None:
        service.keyevent_poll = keyevent_poll
    from p2pblog.daemon import LogLimiter

    service.limiter = LogLimiter(every=settings.log_every, budget=settings.log_budget)

    async def start_web(nursery: trio.Nursery) -> None:
        if web_addr is None:
            return
        from p2pblog.errors import ListenError
        from web.server import serve_web  # the web app: only for `run`

        try:
            app = await nursery.start(serve_web, service, *web_addr)
        except ListenError as exc:
            if web_explicit:
                raise
            log(f"warning: {exc}; the node runs without the web app (give --web HOST:PORT)")
            return
        log(f"web app at {app.origin}/ (`p2pblog open` signs you in)")

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(service.run)
                await start_web(nursery)
                async for _signum in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main_task)
    except BaseExceptionGroup as group:
        # trio wraps what the node's tasks raise.  Our declared errors (a port
        # in use, a store too new) are one line, as in every command; anything
        # else is a bug and keeps its traceback.
        leaves = _leaves(group)
        if not all(_declared(leaf) for leaf in leaves):
            raise
        raise click.ClickException(_message(leaves[0])) from None
    log("stopped")


def _run_settings(
    ctx: click.Context,
    home: Home,
    listen: tuple[str, int],
    bootstrap: list[tuple[str, int]],
    advertise: str | None,
    mention_work: int,
    web: str,
    no_web: bool,
) -> Any:
    """HOME/p2pblog.toml's settings, with the options given on the command line in their place
    (an option left at its default does not override the file)."""
    from p2pblog.config import config_path, load, overridden, parse_web

    settings = load(config_path(home.path))
    given: dict[str, Any] = {}

    def was_given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.DEFAULT_MAP,
        )

    if was_given("listen"):
        given["listen"] = listen
    if was_given("bootstrap"):
        given["bootstrap"] = tuple(bootstrap)
    if was_given("advertise"):
        given["advertise"] = advertise
    if was_given("mention_work"):
        given["mention_work"] = mention_work
    if no_web:
        given["web"] = None
    elif was_given("web"):
        try:
            given["web"] = parse_web(web)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--web") from None
    return overridden(settings, **given)


def _print_settings(settings: Any, home: Home) -> None:
    from p2pblog.config import config_path

    path = config_path(home.path)
    where = "" if path.exists() else " (there is no such file: every value is the default or an option)"
    click.echo(f"# the settings of `p2pblog run` for {home.path}; the file is {path}{where}")
    for key, value, source in settings.shown():
        click.echo(f"{key} = {value}  # {source}")


def _log_through(log: Callable[[str, str | None], None]) -> None:
    """Send what libraries log with `logging` (the web server's errors) to the node's log,
    in its format: one timestamped, levelled line each."""
    import logging

    class NodeLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            level = "error" if record.levelno >= logging.ERROR else "warn"
            if record.levelno < logging.WARNING:
                level = "info"
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            log(text, level)

    root = logging.getLogger()
    root.handlers[:] = [NodeLog()]
    root.setLevel(logging.WARNING)


@main.group("config")
def config_group() -> None:
    """The node's configuration file, HOME/p2pblog.toml (read by `p2pblog run`).

    Keys: listen, advertise, bootstrap, web, mention_work, and in [limits]
    log_every and log_budget; README.md has an example and docs/config.md
    every key.  `p2pblog run` options override the file.
    """


@config_group.command("show")
def config_show() -> None:
    """Print the settings `p2pblog run` would use, with where each comes from.

    (`p2pblog run --print-config ...` shows them with its options applied too.)
    Exits 1 with one line naming the key if the file has a mistake.
    """
    from p2pblog.config import config_path, load

    home = current_home()
    _print_settings(load(config_path(home.path)), home)


def _declared(exc: BaseException) -> bool:
    """An error of ours, or the file system's about a named file (as `_Group` treats them)."""
    return (
        isinstance(exc, _USER_ERRORS) or (isinstance(exc, OSError) and bool(exc.filename)) or _disk_full(exc)
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@main.command()
@click.argument("handle")
@click.option("--json", "as_json", is_flag=True, help="Print the peer record as JSON.")
def lookup(handle: str, as_json: bool) -> None:
    """Find HANDLE's current peer record through the DHT (node running).

    HANDLE may also be a petname or NAME~FINGERPRINT.

    Prints the addresses it is reachable at; exits 1 if no valid record is found.
    """
    home = current_home()
    key = resolve_target(handle, home)  # a typo is reported before the node is asked
    result = control.call(home.path, "lookup", {"handle": encode_handle(key)})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    if not result.get("found"):
        raise click.ClickException(f"not found: no valid peer record for {result.get('handle', handle)}")
    if not as_json:
        click.echo(result["handle"])
        for proto, host, port in result["addrs"]:
            click.echo(f"  {shown(str(proto))} {shown(str(host))}:{port}")  # from a signed record
        click.echo(f"  record seq {result['seq']}, expires {when(result['expires'] * 1000)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the routing table and counters as JSON.")
def peers(as_json: bool) -> None:
    """Show the DHT routing table: contacts per bucket, last seen, dropped-input counters."""
    home = current_home()
    result = control.call(home.path, "peers")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    me = result["self"]
    click.echo(f"node id {me['node_id']}  udp {me['dht'][0]}:{me['dht'][1]}  {result['contacts']} contacts")
    for bucket in result["buckets"]:
        click.echo(f"bucket {bucket['index']}:")
        for c in bucket["contacts"]:
            seen = when(int(c["last_seen"] * 1000))
            click.echo(f"  {c['node_id'][:16]}..  {c['host']}:{c['port']}  last seen {seen}")
    dropped = result["dropped"]
    click.echo("dropped input: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))


@main.command("open")
@click.option(
    "--print", "print_only", is_flag=True, help="Print the sign-in link instead of opening a browser."
)
def open_(print_only: bool) -> None:
    """Open the web app in your browser, signed in (node running).

    Asks the running node for a one-time sign-in link (valid two minutes,
    usable once) and opens it in the default browser; the browser then
    holds a session cookie that only this app can read.  Without it, the
    web app answers every request with 401.
    """
    home = current_home()
    try:
        result = control.call(home.path, "web_login", timeout=10)
    except control.NodeNotRunning:
        raise click.ClickException(f"the node is not running: start it with `{run_command()}`") from None
    except control.ControlError as exc:
        if "unknown command" in str(exc):
            raise click.ClickException(
                "the node runs without the web app (started with --no-web, or its port was taken: "
                "see the node's log)"
            ) from None
        raise
    url = str(result["url"])
    if print_only:
        click.echo(url)
        return
    import webbrowser

    if webbrowser.open(url):
        click.echo(f"opened the web app at {result['origin']}/ in your browser", err=True)
    else:
        click.echo("no browser found here; open this one-time link in one (valid 2 minutes):", err=True)
        click.echo(url)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the full status as JSON.")
def status(as_json: bool) -> None:
    """Show the running node: handle, addresses, peers, followed feeds, dropped input.

    Also says when the disk is full (the node then serves what it holds
    but stores nothing new) and counts internal errors (inputs whose
    handling failed; the node logged them and went on).
    """
    home = current_home()
    result = control.call(home.path, "status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['handle']}  ({result['fingerprint']})")
    for proto, host, port in result["addrs"]:
        click.echo(f"  {proto} {host}:{port}")
    for other in result.get("duplicate_instances") or []:
        where = ", ".join(f"{h}:{p}" for proto, h, p in other["addrs"] if proto != "udp")
        click.echo(
            f"WARNING: another node runs with this identity's key at {where} "
            f"(instance {other['instance'] or 'of an earlier version'}): posts from both will fork "
            "the feed; stop one"
        )
    reach = result.get("reachability") or {}
    state = reach.get("state", "unknown")
    click.echo(f"reachability: {reach.get('reason', state) if state != 'unknown' else 'not checked yet'}")
    if reach.get("client_mode"):
        relay = result.get("relay") or {}
        via = ", ".join(relay.get("via") or []) or "none yet"
        click.echo(f"  client mode: no address advertised; reached through relay(s): {via}")
    mapping = result.get("port_mapping") or {}
    if mapping.get("state") == "mapped" and mapping.get("external"):
        host, port = mapping["external"]
        click.echo(f"port mapping: the router forwards {host}:{port} here")
    elif mapping.get("state") == "failed":
        click.echo(f"port mapping: failed ({mapping.get('reason')})")
    click.echo(f"DHT: {result['contacts']} contacts, {result['records']} records held")
    click.echo(f"peers: {len(result['peers'])} connected")
    for p in result["peers"]:
        way = "->" if p["direction"] == "out" else "<-"
        click.echo(f"  {way} {p['fingerprint']}  {p['addr'][0]}:{p['addr'][1]}  feeds {len(p['feeds'])}")
    click.echo("feeds:")
    for f in result["feeds"]:
        tag = " (own)" if f["own"] else ""
        fork = "  FORKED" if f["forked"] else ""
        click.echo(f"  {f['handle']}{tag}  seq {f['seq']}  from {f['peers']} peer(s){fork}")
    head = result.get("own_head") or {}
    if head.get("state") == "catching up":
        click.echo(
            f"own feed: head not known, catching up (held {head.get('held')}, peers report "
            f"{head.get('reported')}): posting waits until then"
        )
    elif head:
        click.echo(f"own feed: head known (held {head.get('held')})")
    dropped = result["dropped"]
    click.echo("dropped input: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"))
    storage = result.get("storage") or {}
    if storage.get("full"):
        click.echo(
            f"storage: FULL ({storage.get('free_bytes')} bytes free, {storage.get('refused_writes', 0)} "
            "writes refused): posts and new entries wait until space is freed"
        )
    internal = result.get("internal_errors") or {}
    if internal:
        listed = ", ".join(f"{k} {v}" for k, v in internal.items())
        click.echo(f"internal errors: {listed} (the node went on; tracebacks are in its log)")
