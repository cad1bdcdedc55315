"""`p2pblog dm`: direct messages, sealed to their recipient (`p2pblog.dms`).

``dm send`` hands the message to the running node, which delivers it (or
deposits it with the recipient's followers while the recipient is offline);
with no node running it is sealed and queued in the store, and the node
delivers it when it next runs.  ``dm list`` and ``dm read`` read the store.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from cli.common import call_if_running, current_home, load_identity, now_ms, shown, shown_line, when
from cli.social import resolve_target
from identity import encode_handle
from identity.handle import fingerprint
from identity.limits import MAX_DM_CHARS
from p2pblog.home import Home

if TYPE_CHECKING:
    from p2pblog.store import DmRow, Store

#: Messages `dm read` shows at most (the newest).
READ_LIMIT = 500


def _label(store: Store, key: bytes, petnames: dict[bytes, str]) -> str:
    pet = petnames.get(key)
    if pet is not None:
        return pet
    name = store.profile(key).get("name")
    return f"{name}~{fingerprint(key)}" if name else fingerprint(key)


def _row_json(row: DmRow, store: Store, petnames: dict[bytes, str]) -> dict[str, Any]:
    return {
        "id": row.id.hex(),
        "peer": encode_handle(row.peer),
        "peer_label": _label(store, row.peer, petnames),
        "folder": row.folder,
        "direction": "out" if row.folder == "sent" else "in",
        "timestamp": row.timestamp,
        "received": row.received,
        "text": row.text,
        "unread": row.unread,
        "state": row.state,
    }


def _petnames(store: Store) -> dict[bytes, str]:
    return {key: name for name, key in store.petnames()}


@click.group()
def dm() -> None:
    """Direct messages: sealed so only the recipient can read them, never in a feed.

    People you follow land in your inbox; strangers must attach proof of work
    (your node does this for you) and land in requests.  Blocked keys cannot
    message you.
    """


@dm.command("send")
@click.argument("target", metavar="HANDLE|NAME")
@click.argument("text")
def dm_send(target: str, text: str) -> None:
    """Send TEXT (at most 1,000 characters) to HANDLE, a petname or a claimed NAME.

    The running node delivers it, retrying while the recipient is offline and
    leaving a sealed copy with up to two of the recipient's followers, who
    pass it on when the recipient is back.  With no node running, the message
    is queued and sent when `p2pblog run` starts.
    """
    home = current_home()
    key = resolve_target(target, home)
    if len(text) > MAX_DM_CHARS:
        raise click.BadParameter(f"a message is at most {MAX_DM_CHARS} characters, this one is {len(text)}")
    live = call_if_running(home, "dm_send", {"handle": encode_handle(key), "text": text})
    if live is None:
        identity = load_identity(home)
        if key == identity.public_key:
            raise click.ClickException("a message to yourself: there is nobody to send it to")
        with home.open_store() as store:
            if any(blocked == key for blocked, _ in store.blocks()):
                raise click.ClickException("you block this key: unblock it first")
            try:
                from p2pblog.dms import queue_dm  # (loads the node's parts: not for --help)

                did = queue_dm(store, identity, key, text, now_ms(), os.urandom(32))
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
        click.echo(f"queued for {encode_handle(key)}: the node sends it when it runs", err=True)
        click.echo(did.hex())
        return
    click.echo(f"sent to {encode_handle(key)} ({live['state']})", err=True)
    click.echo(live["id"])


@dm.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the conversations as JSON.")
def dm_list(as_json: bool) -> None:
    """List conversations, newest first: inbox, then requests from strangers.

    Each line shows the correspondent, the unread count and the latest
    message; your own messages show their delivery (queued, held by N
    followers of the recipient, delivered, refused)."""
    home = current_home()
    with home.open_store() as store:
        petnames = _petnames(store)
        conversations = store.dm_conversations()
        docs = []
        for row, unread, folder in conversations:
            doc = _row_json(row, store, petnames)
            doc["unread_count"] = unread
            doc["folder"] = folder
            docs.append(doc)
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo("No messages.", err=True)
        return
    for folder in ("inbox", "requests"):
        shown_docs = [d for d in docs if d["folder"] == folder]
        if not shown_docs:
            continue
        click.echo(
            f"{folder.capitalize()}:" if folder == "inbox" else "Requests (from people you do not follow):"
        )
        for doc in shown_docs:
            count = f" ({doc['unread_count']} unread)" if doc["unread_count"] else ""
            prefix = "you: " if doc["direction"] == "out" else ""
            state = f" [{doc['state']}]" if doc["direction"] == "out" else ""
            click.echo(f"  {shown_line(doc['peer_label'])}{count}  {when(doc['timestamp'])}")
            click.echo(f"    {prefix}{shown_line(doc['text'][:120])}{state}")
            click.echo(f"    {doc['peer']}")


@dm.command("read")
@click.argument("target", metavar="HANDLE|NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the messages as JSON, oldest first.")
def dm_read(target: str, as_json: bool) -> None:
    """Show the conversation with HANDLE (oldest first) and mark it read."""
    home = current_home()
    key = resolve_target(target, home)
    with home.open_store() as store:
        petnames = _petnames(store)
        rows = store.dm_thread(key, READ_LIMIT)
        docs = [_row_json(row, store, petnames) for row in rows]
        label = _label(store, key, petnames)
    _mark_read(home, key)
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo(f"No messages with {encode_handle(key)}.", err=True)
        return
    click.echo(f"Conversation with {shown_line(label)} {encode_handle(key)}")
    for doc in docs:
        who = "you" if doc["direction"] == "out" else shown_line(doc["peer_label"])
        state = f"  [{doc['state']}]" if doc["direction"] == "out" else ""
        request = "  (request)" if doc["folder"] == "requests" else ""
        click.echo(f"{when(doc['timestamp'])}  {who}{state}{request}")
        for line in shown(doc["text"]).splitlines() or [""]:
            click.echo(f"  {line}")


def _mark_read(home: Home, key: bytes) -> None:
    if call_if_running(home, "dm_read", {"handle": encode_handle(key)}) is None:
        with home.open_store() as store:
            store.dm_mark_read(key)


COMMANDS = (dm,)
