"""Backup phrases, ``init``'s confirmation, ``init --restore`` and the "head known" rule
(issue 15), through the real command line (click's CliRunner, real homes on disk).

What a user relies on: the phrase gives back exactly the key; a mistyped phrase is
refused with a reason, never turned into another identity; ``init`` writes nothing
until the phrase is confirmed; scripts still read the handle from the last line of
stdout; and a home that does not know its feed's head (restored, or a copied
``identity.key``) refuses every write to the own feed, saying why and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from cli import backup
from cli.main import main
from identity import Identity, read_key_file
from identity.keyfile import key_file_is_encrypted
from identity.phrase import PhraseError, phrase_to_seed, seed_to_phrase
from p2pblog.home import Home
from p2pblog.store import Store

SEED = bytes(range(32))
PHRASE = seed_to_phrase(SEED)
WORDS = PHRASE.split()


def cli(home: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], input=input, env=env)


@pytest.fixture
def fixed_identity(monkeypatch: pytest.MonkeyPatch) -> Identity:
    """``init`` generates the identity of SEED and asks for words 2, 9 and 17."""
    monkeypatch.setattr(Identity, "generate", classmethod(lambda cls: cls(SEED)))
    monkeypatch.setattr(backup, "confirm_positions", lambda: [2, 9, 17])
    return Identity(SEED)


# ------------------------------------------------------------------------------ the phrase


@given(st.binary(min_size=32, max_size=32))
def test_a_phrase_gives_back_its_seed(seed: bytes) -> None:
    phrase = seed_to_phrase(seed)
    assert len(phrase.split()) == 24
    assert phrase_to_seed(phrase) == seed
    # Case, spacing and four-letter abbreviations do not matter.
    assert phrase_to_seed("  " + "\n".join(w[:4].upper() for w in phrase.split()) + " ") == seed


@given(
    st.text(max_size=400)
    | st.lists(st.sampled_from([*WORDS, "zoo", "abandon", "x"]), max_size=30).map(" ".join)
)
def test_any_text_is_a_seed_or_a_phrase_error(text: str) -> None:
    try:
        seed = phrase_to_seed(text)
    except PhraseError:
        return
    assert seed_to_phrase(seed).split() == text.lower().split()


def test_the_bip39_vector_of_the_zero_seed() -> None:
    assert seed_to_phrase(bytes(32)) == " ".join(["abandon"] * 23 + ["art"])


def test_a_wrong_word_fails_the_checksum() -> None:
    wrong = [*WORDS]
    wrong[10] = "zoo" if wrong[10] != "zoo" else "abandon"
    with pytest.raises(PhraseError, match="checksum does not match"):
        phrase_to_seed(" ".join(wrong))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (" ".join(WORDS[:23]), "has 24 words; this one has 23"),
        (" ".join([*WORDS[:5], "bitcoinz", *WORDS[6:]]), "word 6 .* is not a word of the backup word list"),
        ("x" * 5000, "not a backup phrase"),
    ],
)
def test_a_malformed_phrase_says_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(PhraseError, match=reason):
        phrase_to_seed(text)


# ---------------------------------------------------------------------------------- init


def test_init_shows_the_phrase_on_stderr_and_the_handle_last_on_stdout(
    tmp_path: Path, fixed_identity: Identity
) -> None:
    result = cli(tmp_path / "h", "init")  # CliRunner's stdin is not a terminal
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == fixed_identity.handle
    assert WORDS[0] not in result.stdout
    assert all(word in result.stderr for word in WORDS)
    assert "write the phrase down" in result.stderr
    assert Home(tmp_path / "h").load_identity().seed == SEED


def test_init_no_confirm_shows_the_phrase_and_asks_nothing(tmp_path: Path, fixed_identity: Identity) -> None:
    result = cli(tmp_path / "h", "init", "--no-confirm", input="")
    assert result.exit_code == 0, result.output
    assert PHRASE.split()[5] in result.stderr and "Word #" not in result.stderr
    assert "not a terminal" not in result.stderr
    assert result.stdout.strip().splitlines()[-1] == fixed_identity.handle


def test_init_writes_the_identity_once_the_phrase_is_confirmed(
    tmp_path: Path, fixed_identity: Identity
) -> None:
    answers = f"{WORDS[1]}\nnot-it\n{WORDS[8].upper()}\n{WORDS[16]}\n"
    result = cli(tmp_path / "h", "init", "--confirm", input=answers)
    assert result.exit_code == 0, result.output
    assert "That is not word #9; 2 more tries." in result.stderr
    assert "Phrase confirmed." in result.stderr
    assert result.stdout.strip().splitlines()[-1] == fixed_identity.handle


def test_init_writes_nothing_when_the_phrase_is_not_confirmed(
    tmp_path: Path, fixed_identity: Identity
) -> None:
    del fixed_identity
    result = cli(tmp_path / "h", "init", "--confirm", input=f"{WORDS[1]}\nno\nnope\nstill no\n")
    assert result.exit_code == 1
    assert "not confirmed; nothing was written" in result.stderr
    assert not (tmp_path / "h" / "identity.key").exists()
    assert not (tmp_path / "h" / "store.sqlite3").exists()


def test_init_with_encrypt_still_shows_the_phrase(tmp_path: Path, fixed_identity: Identity) -> None:
    del fixed_identity
    result = cli(tmp_path / "h", "init", "--encrypt", env={"P2PBLOG_PASSPHRASE": "pw"})
    assert result.exit_code == 0, result.output
    assert PHRASE.split()[23] in result.stderr
    assert key_file_is_encrypted(tmp_path / "h" / "identity.key")


def test_identity_phrase_shows_it_again_with_a_warning(tmp_path: Path, fixed_identity: Identity) -> None:
    del fixed_identity
    assert cli(tmp_path / "h", "init").exit_code == 0
    result = cli(tmp_path / "h", "identity", "phrase")
    assert result.exit_code == 0
    assert result.stdout.strip() == PHRASE
    assert "Anyone who sees them can post as you" in result.stderr


def test_a_new_identity_posts_at_once(tmp_path: Path) -> None:
    assert cli(tmp_path / "h", "init", "--name", "Alice").exit_code == 0
    assert_posts(tmp_path / "h", "first", 2)  # after the profile entry


# ------------------------------------------------------------------------------- restore


def restored(tmp_path: Path, name: str = "new") -> Path:
    home = tmp_path / name
    result = cli(home, "init", "--restore", input=PHRASE + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == Identity(SEED).handle
    assert "must catch up with your feed" in result.stderr
    return home


def assert_posts(home: Path, text: str, seq: int) -> None:
    result = cli(home, "post", text)
    assert result.exit_code == 0, result.output
    assert f"Posted #{seq}" in result.stderr


def old_home(tmp_path: Path, posts: int) -> Path:
    """A home with a new identity (not SEED) that posted ``posts`` times."""
    old = tmp_path / "old"
    assert cli(old, "init").exit_code == 0
    for i in range(posts):
        assert_posts(old, f"old {i}", i + 1)
    return old


def assert_refused(result: Result) -> None:
    assert result.exit_code == 1, result.output
    message = result.stderr
    assert "is not known here" in message and "fork the feed" in message  # why
    assert "p2pblog run" in message and "p2pblog import" in message  # how
    assert "p2pblog identity head --assume-new" in message
    assert "Traceback" not in message


def test_a_restored_home_refuses_every_write_to_its_feed(tmp_path: Path) -> None:
    home = restored(tmp_path)
    other = Identity(bytes([7]) * 32).handle
    for args in (("post", "hello"), ("profile", "set", "--name", "A"), ("follow", other)):
        assert_refused(cli(home, *args))
    with Store(home / "store.sqlite3") as store:
        assert store.latest_seq(Identity(SEED).public_key) == 0
    result = cli(home, "identity", "head")
    assert result.exit_code == 0
    assert "head not known: catching up (held 0)" in result.stdout


def test_restoring_into_a_home_with_an_identity_is_refused(tmp_path: Path) -> None:
    home = restored(tmp_path)
    before = (home / "identity.key").read_bytes()
    result = cli(home, "init", "--restore", input=seed_to_phrase(bytes(32)) + "\n")
    assert result.exit_code == 1
    assert "an identity already exists" in result.stderr and "fresh home" in result.stderr
    assert (home / "identity.key").read_bytes() == before


def test_a_mistyped_phrase_restores_nothing(tmp_path: Path) -> None:
    wrong = " ".join([*WORDS[:23], "zoo" if WORDS[23] != "zoo" else "abandon"])
    result = cli(tmp_path / "new", "init", "--restore", input=wrong + "\n")
    assert result.exit_code == 1
    assert "not restored: the phrase's checksum does not match" in result.stderr
    assert not (tmp_path / "new" / "identity.key").exists()


@pytest.mark.parametrize("encrypted", [False, True])
def test_restore_from_a_key_file(tmp_path: Path, encrypted: bool) -> None:
    env = {"P2PBLOG_PASSPHRASE": "secret words"} if encrypted else None
    old = tmp_path / "old"
    assert cli(old, "init", *(["--encrypt"] if encrypted else []), env=env).exit_code == 0
    backup_copy = tmp_path / "backup.key"
    shutil.copy(old / "identity.key", backup_copy)
    result = cli(tmp_path / "new", "init", "--restore", "--key-file", str(backup_copy), env=env)
    assert result.exit_code == 0, result.output
    key = tmp_path / "new" / "identity.key"
    assert key_file_is_encrypted(key) == encrypted
    assert (
        read_key_file(key, "secret words" if encrypted else None).seed
        == read_key_file(backup_copy, "secret words" if encrypted else None).seed
    )
    assert_refused(cli(tmp_path / "new", "post", "hi", env=env))


def test_a_copied_key_file_refuses_to_post_until_the_head_is_known(tmp_path: Path) -> None:
    """The issue's first finding: identity.key copied into a new home, then `post`."""
    old = old_home(tmp_path, 3)
    new = tmp_path / "new"
    new.mkdir(mode=0o700)
    shutil.copy(old / "identity.key", new / "identity.key")
    os.chmod(new / "identity.key", 0o600)
    assert_refused(cli(new, "post", "this would be #1 again"))

    # A backup of the feed (exported from the old home) tells the head: the next post is #4.
    feed = tmp_path / "feed.p2pfeed"
    handle = cli(old, "id").stdout.strip()
    assert cli(old, "export", handle, str(feed)).exit_code == 0
    result = cli(new, "import", str(feed))
    assert result.exit_code == 0, result.output
    assert "head is now known (#3)" in result.stderr
    assert_posts(new, "next", 4)


def test_assume_new_lets_a_never_used_identity_post(tmp_path: Path) -> None:
    home = restored(tmp_path)
    result = cli(home, "identity", "head", "--assume-new")
    assert result.exit_code == 0, result.output
    assert "head known" in result.stdout
    assert_posts(home, "hello", 1)


def test_assume_new_is_refused_once_entries_of_the_feed_are_held(tmp_path: Path) -> None:
    old = old_home(tmp_path, 1)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    with Store(new / "store.sqlite3") as store:
        store.mark_head_unknown(read_key_file(new / "identity.key").public_key)
    result = cli(new, "identity", "head", "--assume-new")
    assert result.exit_code == 1
    assert "already holds 1 entries of your feed" in result.stderr
    assert_refused(cli(new, "post", "two"))


def test_a_store_from_before_the_rule_keeps_posting(tmp_path: Path) -> None:
    """Existing homes see no change: a store with no marker knows its head."""
    home = tmp_path / "h"
    assert cli(home, "init").exit_code == 0
    db = sqlite3.connect(home / "store.sqlite3")
    with db:
        db.execute("DELETE FROM settings WHERE key = 'own_head'")
    db.close()
    assert_posts(home, "still here", 1)


def test_a_mark_made_by_another_process_is_seen_by_an_open_store(tmp_path: Path) -> None:
    """The node keeps its store open while `identity head --assume-new` (or an import)
    marks the head known through another connection."""
    author = Identity(SEED)
    with Store(tmp_path / "s.sqlite3") as node_store:
        node_store.mark_head_unknown(author.public_key)
        with Store(tmp_path / "s.sqlite3") as cli_store:
            cli_store.mark_head_known(author.public_key)
        assert node_store.append(author, "post", {"text": "now"}, 1).seq == 1
        # Other feeds were never refused.
        assert node_store.head_known(Identity(bytes(32)).public_key)
