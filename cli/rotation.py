"""`p2pblog identity rotate` and `identity recover`: root keys with pre-rotation (`p2pblog.rotation`).

Both change the key this home signs with, so the node must be stopped.  The
*recovery key* (the committed next root key) is shown once as a phrase, to
keep offline: a thief of this home does not have it.
"""

from __future__ import annotations

import click

from cli.common import current_home, load_identity, now_ms
from identity import Identity, decode_handle, encode_handle
from identity.handle import HandleError, fingerprint
from identity.keyfile import key_file_is_encrypted, write_key_file
from identity.phrase import PhraseError, phrase_to_seed, seed_to_phrase
from p2pblog import control
from p2pblog.devices import key_digest
from p2pblog.home import Home


def _read_phrase(prompt: str) -> Identity:
    from cli.backup import read_phrase  # (cli.backup imports this module)

    try:
        return Identity(phrase_to_seed(read_phrase(prompt)))
    except PhraseError as exc:
        raise click.ClickException(f"that is not a valid recovery phrase: {exc}") from None


def _show_recovery(key: Identity) -> None:
    click.echo(
        "\nYour new RECOVERY PHRASE (the identity's next root key). Write it down and keep it "
        "offline, away from this machine:\n\n"
        f"    {seed_to_phrase(key.seed)}\n\n"
        "`p2pblog identity rotate` needs it to rotate the root key, and `p2pblog identity "
        "recover` takes the identity back with it if this machine's key is stolen. It is shown "
        "only now.",
        err=True,
    )


def _node_stopped(home: Home) -> None:
    try:
        control.call(home.path, "status", {})
    except control.NodeNotRunning:
        return
    raise click.ClickException(
        "stop the node first (it signs with the key this changes), then run this again"
    )


def _install_key(home: Home, new: Identity, passphrase: str | None) -> None:
    """Make ``new`` this home's key; the old key file is kept beside it, retired."""
    if home.key_file.exists():
        old = home.key_file
        retired = old.with_name(f"{old.name}.retired-{fingerprint(load_identity(home).public_key)}")
        old.replace(retired)
    write_key_file(home.key_file, new, passphrase)


def _passphrase(home: Home) -> str | None:
    if home.key_file.exists() and key_file_is_encrypted(home.key_file):
        return str(click.prompt("Passphrase for the new key file", hide_input=True, confirmation_prompt=True))
    return None


@click.command("rotate")
def identity_rotate() -> None:
    """Rotate the identity's root key (pre-rotation, as in KERI).

    The first time, this commits the identity to a next root key and shows it
    as a recovery phrase to keep offline; nothing else changes.  The next time
    it asks for that phrase, makes that key the root (followers move to it by
    themselves), and shows a new recovery phrase for the key after it.  Stop
    the node first.
    """
    from p2pblog.pairing import identity_of_home  # (these load the node's parts)
    from p2pblog.rotation import RotationError, commit, rotate

    home = current_home()
    _node_stopped(home)
    root = load_identity(home)
    with home.open_store() as store:
        identity = identity_of_home(store, root.public_key)
        try:
            if store.current_commitment(identity) is None:
                next_key = Identity.generate()
                commit(store, root, next_key.public_key, now_ms())
                click.echo(f"committed {encode_handle(identity)} to a next root key", err=True)
                _show_recovery(next_key)
                click.echo(encode_handle(identity))
                return
            new = _read_phrase("Recovery phrase (the committed next key)")
            after = Identity.generate()
            passphrase = _passphrase(home)
            rotate(store, root, new, after.public_key, now_ms())
        except RotationError as exc:
            raise click.ClickException(str(exc)) from None
    _install_key(home, new, passphrase)
    click.echo(
        f"rotated: this home now signs with {fingerprint(new.public_key)} for {encode_handle(identity)}; "
        "followers move to it as they replicate your feed",
        err=True,
    )
    _show_recovery(after)
    click.echo(encode_handle(identity))


@click.command("recover")
@click.option("--identity", "handle", help="The identity's handle (default: this home's).")
@click.option(
    "--cut", type=click.IntRange(min=0), help="The last seq of the stolen root's feed that is yours."
)
def identity_recover(handle: str | None, cut: int | None) -> None:
    """Take the identity back with its recovery phrase after its root key was stolen.

    The committed key becomes the root; the stolen key's entries after --cut
    (default: the last one this home holds) are refused by every follower,
    which learns of the recovery through the DHT within five minutes of the
    node running.  Works in this home (stop the node first) or a new one.
    """
    from p2pblog.pairing import identity_of_home  # (these load the node's parts)
    from p2pblog.rotation import RotationError, recover

    home = current_home()
    _node_stopped(home)
    try:
        identity = decode_handle(handle) if handle else None
    except HandleError as exc:
        raise click.BadParameter(str(exc), param_hint="--identity") from None
    fresh = not home.exists()
    if fresh and identity is None:
        raise click.BadParameter("a new home needs the identity's handle", param_hint="--identity")
    new = _read_phrase("Recovery phrase (the committed next key)")
    if fresh:
        home.create(new)
    after = Identity.generate()
    with home.open_store() as store:
        if identity is None:
            identity = identity_of_home(store, load_identity(home).public_key)
        held = store.latest_seq(store.root_chain(identity)[-1][0])  # the current (stolen) root's feed
        if cut is None and not held:
            raise click.BadParameter(
                "this home holds none of the identity's feed: give the last seq that is yours "
                "(`p2pblog log HANDLE` on a follower shows it)",
                param_hint="--cut",
            )
        point = held if cut is None else cut
        if store.latest_seq(identity) and store.current_commitment(identity) not in (
            None,
            key_digest(new.public_key),
        ):
            raise click.ClickException("that phrase is not the key this identity committed to")
        passphrase = None if fresh else _passphrase(home)
        try:
            recover(store, identity, new, after.public_key, point, now_ms())
        except RotationError as exc:
            raise click.ClickException(str(exc)) from None
    if not fresh:
        _install_key(home, new, passphrase)
    click.echo(
        f"recovered {encode_handle(identity)}: its root is now {fingerprint(new.public_key)}; entries of "
        f"the stolen key after #{point} are refused once followers see the recovery (start the node)",
        err=True,
    )
    _show_recovery(after)
    click.echo(encode_handle(identity))
