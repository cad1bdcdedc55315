"""`p2pblog device`: one identity on several devices (`p2pblog.devices`, `p2pblog.pairing`).

Each device has its own key and its own feed, so two devices posting at once
never fork; the identity's root certifies them, and followers follow the
identity and see every device's posts under its one handle.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import TYPE_CHECKING, Any

import click

from cli.common import call_if_running, current_home, load_identity, now_ms, public_key, shown_line
from identity import decode_handle, encode_handle
from identity.handle import HandleError, fingerprint
from p2pblog.entry import REVOKE
from p2pblog.home import Home

if TYPE_CHECKING:
    from p2pblog.store import DeviceRow, Store


def _pairing() -> Any:
    """`p2pblog.pairing`, imported when a command runs (it loads the node's parts)."""
    from p2pblog import pairing

    return pairing


def _default_name() -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", socket.gethostname().lower()).strip("-")[:32]
    return name or "device"


@click.group()
def device() -> None:
    """Use one identity on several devices.

    On the new machine: `p2pblog init`, then `p2pblog device add` prints a
    pairing code.  On a device that holds the identity's root key, with its
    node running: `p2pblog device approve CODE`.  The new device's node
    (`p2pblog run`) finds the approval in the DHT and joins: from then on its
    posts show under the identity's handle, in one timeline, for everyone who
    follows the identity.
    """


@device.command("add")
@click.option("--name", help="A name for this device (a-z, 0-9, _ and -; default: the host name).")
def device_add(name: str | None) -> None:
    """Print a pairing code for this device, to approve on the identity's root device."""
    home = current_home()
    name = name or _default_name()
    if not re.fullmatch(r"[a-z0-9_-]{1,32}", name):
        raise click.BadParameter("1-32 characters of a-z, 0-9, _ and -", param_hint="--name")
    own = public_key(home)
    with home.open_store() as store:
        try:
            code = _pairing().start_pairing(store, own, name, os.urandom(8))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(
        f"Pairing code for device {name!r} ({fingerprint(own)}). On a device that holds your identity's "
        "root key, with its node running, run:\n\n"
        f"    p2pblog device approve {_pairing().encode_code(code)}\n\n"
        "then keep this device's node running (`p2pblog run`): it joins when it finds the approval.",
        err=True,
    )
    click.echo(_pairing().encode_code(code))


@device.command("approve")
@click.argument("code")
@click.option("--admin", is_flag=True, help="Let the new device approve and revoke devices too.")
def device_approve(code: str, admin: bool) -> None:
    """Certify the device of pairing CODE (from `p2pblog device add`) as one of this identity's.

    Needs the node running: it publishes the approval the new device looks for.
    """
    home = current_home()
    pairing = _pairing()
    try:
        pairing.decode_code(code)
    except pairing.PairingError as exc:
        raise click.BadParameter(str(exc), param_hint="CODE") from None
    live = call_if_running(home, "device_approve", {"code": code, "admin": admin})
    if live is None:
        raise click.ClickException(
            "the node is not running: start it (`p2pblog run`) so the new device can find the approval"
        )
    click.echo(f"approved device {live['name']!r} {live['device']}", err=True)
    click.echo(live["device"])


def _state(row: DeviceRow, store: Store) -> str:
    if row.after is not None:
        return f"revoked after #{row.after}"
    if not row.consented:
        return "approved, waiting for the device to join"
    return f"active (#{store.latest_seq(row.key)} held here)"


@device.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def device_list(as_json: bool) -> None:
    """List the identity's devices: the root, and each certified device with its state."""
    home = current_home()
    own = public_key(home)
    with home.open_store() as store:
        identity = _pairing().identity_of_home(store, own)
        waiting = _pairing().pending(store)
        rows = store.devices_of(identity)
        docs = [
            {
                "name": "root",
                "device": encode_handle(identity),
                "admin": True,
                "state": "root",
                "this": identity == own,
                "seq": store.latest_seq(identity),
            }
        ]
        docs += [
            {
                "name": r.name,
                "device": encode_handle(r.key),
                "admin": r.admin,
                "state": _state(r, store),
                "this": r.key == own,
                "seq": store.latest_seq(r.key),
                "revoked_after": r.after,
            }
            for r in rows
        ]
    if as_json:
        click.echo(
            json.dumps({"identity": encode_handle(identity), "devices": docs, "pairing": bool(waiting)})
        )
        return
    click.echo(f"identity {encode_handle(identity)}")
    if waiting is not None:
        click.echo(
            f"this device waits to be approved as {waiting[1]!r} (`p2pblog device add` printed the code)"
        )
    for doc in docs:
        mark = " (this device)" if doc["this"] else ""
        admin = ", admin" if doc["admin"] and doc["name"] != "root" else ""
        click.echo(
            f"  {shown_line(str(doc['name']))}{mark}  {fingerprint(decode_handle(str(doc['device'])))}"
        )
        click.echo(f"    {doc['state']}{admin}")


def _device_key(home: Home, store: Store, target: str) -> bytes:
    identity = _pairing().identity_of_home(store, public_key(home))
    rows = store.devices_of(identity)
    named = [r.key for r in rows if r.name == target]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise click.ClickException(f"{len(named)} devices are called {target!r}: give the device's handle")
    try:
        key = decode_handle(target)
    except HandleError:
        raise click.ClickException(f"no device called {target!r} (`p2pblog device list`)") from None
    if key not in {r.key for r in rows}:
        raise click.ClickException("that key is not a device of this identity (`p2pblog device list`)")
    return key


@device.command("revoke")
@click.argument("target", metavar="NAME")
def device_revoke(target: str) -> None:
    """Revoke device NAME (or its handle): its later posts are refused by every follower.

    What it posted before the revocation stays.  Revoke a lost or stolen
    device from the root device (or an admin device)."""
    home = current_home()
    with home.open_store() as store:
        key = _device_key(home, store, target)
    live = call_if_running(home, "device_revoke", {"handle": encode_handle(key)})
    if live is None:
        identity = load_identity(home)
        with home.open_store() as store:
            own = identity.public_key
            if _pairing().identity_of_home(store, own) != own:
                raise click.ClickException("revoke devices on the identity's root device")
            after = store.latest_seq(key)
            store.append(identity, REVOKE, {"after": after, "device": key}, now_ms())
    else:
        after = live["after"]
    click.echo(f"revoked {target!r}: its entries after #{after} are refused", err=True)


COMMANDS = (device,)
