"""Backup and restore: the backup phrase ``init`` shows, ``init --restore``, and the
``identity`` commands (``identity phrase``, ``identity head``).

The phrase is the identity's 32-byte seed as 24 BIP-39 words
(`identity.phrase`).  Everything for people goes to stderr: scripts take the
last line of ``init``'s stdout as the handle, and a phrase in a captured
stdout would end up in logs.  A restored home may not sign until it knows its
feed's head (`p2pblog.own_head`): the node catches up, or an import does, or
``identity head --assume-new`` says the identity never posted.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from pathlib import Path
from typing import Final

import click

from cli.common import current_home, load_identity, passphrase, public_key, run_command
from identity import Identity, read_key_file
from identity.keyfile import key_file_is_encrypted
from identity.phrase import MAX_PHRASE_CHARS, PhraseError, phrase_to_seed, seed_to_phrase
from p2pblog import control
from p2pblog.home import Home, HomeError

#: Words of the phrase the user types back to confirm it, and tries for each.
CONFIRM_WORDS: Final = 3
CONFIRM_TRIES: Final = 3


def _interactive() -> bool:
    return sys.stdin.isatty()


def confirm_positions() -> list[int]:
    """Which words (1-based, in order) the user is asked for."""
    return sorted(secrets.SystemRandom().sample(range(1, 25), CONFIRM_WORDS))


def show_phrase(identity: Identity) -> None:
    words = seed_to_phrase(identity.seed).split()
    click.echo("Your backup phrase (24 words). Write it down, in order, and keep it offline:", err=True)
    click.echo("", err=True)
    for row in range(0, 24, 6):
        line = "  ".join(f"{n + 1:2d}. {words[n]:<8}" for n in range(row, row + 6))
        click.echo(f"  {line}".rstrip(), err=True)
    click.echo("", err=True)
    click.echo(
        "Anyone with these words can post as you; with them you can restore this identity on a "
        "new machine (`p2pblog init --restore`).",
        err=True,
    )


def confirm_phrase(identity: Identity) -> None:
    """Ask for a few words of the phrase; abort (nothing written yet) if they are wrong."""
    words = seed_to_phrase(identity.seed).split()
    for position in confirm_positions():
        for attempt in range(CONFIRM_TRIES):
            answer = str(click.prompt(f"Word #{position} of your phrase", err=True)).strip().lower()
            if answer == words[position - 1]:
                break
            left = CONFIRM_TRIES - attempt - 1
            if left:
                click.echo(f"That is not word #{position}; {left} more tries.", err=True)
        else:
            raise click.ClickException(
                "the backup phrase was not confirmed; nothing was written. Run `p2pblog init` again "
                "and write the new phrase down"
            )
    click.echo("Phrase confirmed.", err=True)


def new_identity(home: Home, encrypt: bool, confirm: bool | None) -> tuple[Identity, str | None, bool]:
    """A new identity, its passphrase, and whether its phrase was shown and confirmed
    (asked unless told not to, or stdin is not a terminal); raises before anything is
    written.  Not asked, the phrase is shown once the home is written (`shown_unasked`),
    so a home that cannot be written (a full disk) shows no phrase of a lost key."""
    if home.exists():
        raise HomeError(f"an identity already exists in {home.path}")
    identity = Identity.generate()
    secret = passphrase(confirm=True) if encrypt else None
    asked = _interactive() if confirm is None else confirm
    if asked:
        show_phrase(identity)
        confirm_phrase(identity)
    return identity, secret, asked


def shown_unasked(identity: Identity, confirm: bool | None) -> None:
    show_phrase(identity)
    if confirm is None:
        click.echo("stdin is not a terminal: not asking to confirm it; write the phrase down.", err=True)


def read_phrase(prompt: str = "Backup phrase") -> str:
    """A phrase typed at a hidden prompt, or read from stdin when it is not a terminal."""
    if _interactive():
        return str(click.prompt(f"{prompt} (24 words; input hidden)", hide_input=True, err=True))
    return sys.stdin.read(MAX_PHRASE_CHARS + 1)


def restored_identity(home: Home, key_file: Path | None, encrypt: bool) -> tuple[Identity, str | None]:
    """The identity to restore, from the phrase (prompted, or stdin) or a key file, and the
    passphrase to keep it under (a key file's own, or a new one with --encrypt)."""
    if home.exists():
        raise HomeError(
            f"an identity already exists in {home.path}: restore into a fresh home (--home DIR); "
            "a home's identity is never replaced"
        )
    secret: str | None = None
    if key_file is not None:
        old = passphrase() if key_file_is_encrypted(key_file) else None
        identity = read_key_file(key_file, old)
        secret = old
    else:
        try:
            identity = Identity(phrase_to_seed(read_phrase()))
        except PhraseError as exc:
            raise click.ClickException(f"not restored: {exc}") from None
    if encrypt:
        secret = passphrase(confirm=True)
    return identity, secret


def restored_message(home: Home, identity: Identity) -> None:
    click.echo(
        f"Restored identity {identity.handle} in {home.path} (fingerprint {identity.fingerprint}).\n"
        f"Before you can post, the node must catch up with your feed from the network: run "
        f"`{run_command()}` and wait until `p2pblog status` says the head is known. "
        "(If this identity never posted anything anywhere: `p2pblog identity head --assume-new`.)",
        err=True,
    )


# --- p2pblog identity ---------------------------------------------------------------------


@click.group("identity")
def identity_group() -> None:
    """The identity's backup phrase, what this home knows of its feed, and its root key
    (rotate it; recover it with the recovery phrase after a theft)."""


@identity_group.command("phrase")
def phrase_command() -> None:
    """Print the backup phrase of this home's identity (the key itself, in 24 words)."""
    home = current_home()
    identity = load_identity(home)
    click.echo(
        "Warning: these 24 words are your key. Anyone who sees them can post as you, forever. "
        "Write them down offline; do not paste them anywhere.",
        err=True,
    )
    click.echo(seed_to_phrase(identity.seed))


@identity_group.command("head")
@click.option(
    "--assume-new",
    is_flag=True,
    help="Declare that this identity never posted anything anywhere, so its feed starts here. "
    "Wrong, it forks the feed and followers refuse it from then on.",
)
def head_command(assume_new: bool) -> None:
    """Show whether this home knows the head of its own feed (posting needs it)."""
    home = current_home()
    own = public_key(home)
    with home.open_store() as store:
        known, held = store.head_known(own), store.latest_seq(own)
        if assume_new and not known:
            if held:
                raise click.ClickException(
                    f"this home already holds {held} entries of your feed, so it has posted: "
                    f"run the node (`{run_command()}`) so it catches up with the rest"
                )
            store.mark_head_known(own)
            known = True
            click.echo("The feed starts here: posting is possible.", err=True)
    if known:
        click.echo(f"head known: this home holds {held} entries of your feed")
        return
    live = None
    with contextlib.suppress(control.NodeNotRunning):
        live = control.call(home.path, "status").get("own_head")
    reported = f", peers report {live['reported']}" if live and "reported" in live else ""
    click.echo(
        f"head not known: catching up (held {held}{reported}); "
        + ("the node is running" if live else f"run `{run_command()}` to catch up")
    )


def _add_rotation() -> None:
    from cli.rotation import identity_recover, identity_rotate

    identity_group.add_command(identity_rotate)
    identity_group.add_command(identity_recover)


_add_rotation()
COMMANDS = [identity_group]
