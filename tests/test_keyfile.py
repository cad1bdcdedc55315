"""Key files (identity.keyfile): an identity's seed on disk.

Checks that write_key_file creates the file with mode 0600 whatever the umask,
never overwrites (nor follows a symlink); plain and passphrase-encrypted round
trips; that a missing or wrong passphrase raises PassphraseError; that a file
others can read is refused with a "chmod 600" hint; and that every malformed,
truncated, inconsistent or oversize file raises KeyFileError and never another
exception type.  Argon2id costs ~0.1 s a call, so only a handful of tests run it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity import Identity, KeyFileError, PassphraseError, read_key_file, write_key_file
from identity.keyfile import FORMAT, MAX_KEY_FILE_BYTES, key_file_is_encrypted

SEED = bytes(range(100, 132))
OTHER_SEED = bytes(range(200, 232))
PASSPHRASE = "correct horse battery staple"

fuzz_settings = settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def encrypted_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An encrypted key file's JSON, made once (Argon2id is slow by design)."""
    path = tmp_path_factory.mktemp("enc") / "key"
    write_key_file(path, Identity(SEED), PASSPHRASE)
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def write_raw(path: Path, data: bytes | str) -> Path:
    """Replace path with data, mode 0600 (so only the content is under test)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o600)
    return path


def write_doc(path: Path, doc: Any) -> Path:
    return write_raw(path, json.dumps(doc))


def plain_doc(seed: bytes = SEED) -> dict[str, Any]:
    ident = Identity(seed)
    return {"format": FORMAT, "type": "ed25519", "public": ident.public_key.hex(), "secret": seed.hex()}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- writing --------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_write_creates_mode_0600_even_with_umask_0(tmp_path: Path) -> None:
    assert os.umask(0) == 0  # the fixture is in effect
    path = tmp_path / "key"
    write_key_file(path, Identity(SEED))
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_write_creates_mode_0600_with_any_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_key_file(tmp_path / "key", Identity(SEED))
    finally:
        os.umask(old)
    # 0o277 would leave the owner without write; the file must still be 0600.
    assert mode_of(tmp_path / "key") == 0o600


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_key_file(path, Identity(SEED))
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(path, Identity(OTHER_SEED))
    assert path.read_bytes() == before
    assert read_key_file(path).seed == SEED


def test_write_refuses_to_overwrite_any_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("precious")
    with pytest.raises(KeyFileError):
        write_key_file(path, Identity(SEED))
    assert path.read_text() == "precious"


def test_write_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "key"
    link.symlink_to(target)  # dangling: O_EXCL must refuse it, not create target
    with pytest.raises(KeyFileError):
        write_key_file(link, Identity(SEED))
    assert not target.exists()


def test_empty_passphrase_is_refused_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "key"
    with pytest.raises(PassphraseError):
        write_key_file(path, Identity(SEED), "")
    assert not path.exists()


# --- round trips ----------------------------------------------------------------------


def test_plain_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "key"
    ident = Identity(SEED)
    write_key_file(path, ident)
    loaded = read_key_file(path)
    assert loaded.seed == SEED
    assert loaded.public_key == ident.public_key
    assert not key_file_is_encrypted(path)
    doc = json.loads(path.read_text())
    assert doc == plain_doc()


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.binary(min_size=32, max_size=32))
def test_plain_round_trip_any_seed(tmp_path: Path, seed: bytes) -> None:
    path = tmp_path / "key"
    path.unlink(missing_ok=True)
    write_key_file(path, Identity(seed))
    assert read_key_file(path).seed == seed


def test_encrypted_round_trip(tmp_path: Path, encrypted_doc: dict[str, Any]) -> None:
    path = write_doc(tmp_path / "key", encrypted_doc)
    assert key_file_is_encrypted(path)
    assert read_key_file(path, PASSPHRASE).seed == SEED


def test_encrypted_file_does_not_hold_the_seed(encrypted_doc: dict[str, Any]) -> None:
    assert "secret" not in encrypted_doc
    assert SEED.hex() not in json.dumps(encrypted_doc)
    assert encrypted_doc["kdf"] == "argon2id"
    assert encrypted_doc["public"] == Identity(SEED).public_key.hex()


@pytest.mark.usefixtures("umask_zero")
def test_encrypted_write_non_ascii_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_key_file(path, Identity(OTHER_SEED), "pässwörd ключ")
    assert mode_of(path) == 0o600
    assert read_key_file(path, "pässwörd ключ").seed == OTHER_SEED


def test_wrong_passphrase(tmp_path: Path, encrypted_doc: dict[str, Any]) -> None:
    path = write_doc(tmp_path / "key", encrypted_doc)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        read_key_file(path, PASSPHRASE + " ")


def test_missing_passphrase(tmp_path: Path, encrypted_doc: dict[str, Any]) -> None:
    path = write_doc(tmp_path / "key", encrypted_doc)
    with pytest.raises(PassphraseError, match="passphrase is needed"):
        read_key_file(path)
    assert issubclass(PassphraseError, KeyFileError)


# --- permissions ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610, 0o601, 0o620, 0o602])
def test_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    write_key_file(path, Identity(SEED))
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, PassphraseError)


def test_encrypted_file_others_can_read_is_refused(tmp_path: Path, encrypted_doc: dict[str, Any]) -> None:
    path = write_doc(tmp_path / "key", encrypted_doc)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path, PASSPHRASE)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    write_key_file(path, Identity(SEED))
    path.chmod(mode)
    try:
        assert read_key_file(path).seed == SEED
    finally:
        path.chmod(0o600)


# --- malformed files ------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        read_key_file(tmp_path / "absent")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"{",
        b'{"format": "p2pblog-key/1",',
        b"\xff\xfe\x00garbage",
        b'{"format": "p2pblog-key/1", "type": "ed25519", "public": "\xff"}',
        b"[" * 2000 + b"]" * 2000,  # nesting deep enough to exhaust the recursion limit
        b'{"a":' * 680 + b"1" + b"}" * 680,
        b"NaN",
    ],
    ids=["empty", "text", "brace", "cut", "binary", "bad-utf8", "deep-list", "deep-dict", "nan"],
)
def test_malformed_json_is_refused(tmp_path: Path, content: bytes) -> None:
    assert len(content) <= MAX_KEY_FILE_BYTES
    path = write_raw(tmp_path / "key", content)
    with pytest.raises(KeyFileError):
        read_key_file(path)


@pytest.mark.parametrize("doc", [[], None, "p2pblog-key/1", 1, [plain_doc()]], ids=repr)
def test_json_that_is_not_an_object_is_refused(tmp_path: Path, doc: Any) -> None:
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="not a p2pblog key file"):
        read_key_file(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format", "p2pblog-key/2"),
        ("format", "P2PBLOG-KEY/1"),
        ("format", 1),
        ("format", None),
        ("type", "rsa"),
        ("type", "Ed25519"),
        ("type", None),
    ],
)
def test_wrong_format_or_type_is_refused(tmp_path: Path, field: str, value: Any) -> None:
    doc = plain_doc()
    if value is None:
        del doc[field]
    else:
        doc[field] = value
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="not a p2pblog key file"):
        read_key_file(path)


@pytest.mark.parametrize("field", ["public", "secret"])
@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: h[:-2],  # truncated by one byte
        lambda h: h[:-1],  # odd length
        lambda h: h[:32],
        lambda h: "",
        lambda h: h + "00",
        lambda h: h[:-1] + "g",
        lambda h: h[:-1] + "\u0660",
        lambda h: int(h, 16),
        lambda h: [h],
        lambda h: None,
    ],
    ids=["minus-byte", "odd", "half", "empty", "plus-byte", "non-hex", "arabic-digit", "int", "list", "null"],
)
def test_malformed_hex_field_is_refused(tmp_path: Path, field: str, mangle: Any) -> None:
    doc = plain_doc()
    doc[field] = mangle(doc[field])
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match=f"malformed '{field}'"):
        read_key_file(path)


@pytest.mark.parametrize("field", ["public", "secret"])
def test_missing_key_field_is_refused(tmp_path: Path, field: str) -> None:
    doc = plain_doc()
    del doc[field]
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="malformed"):
        read_key_file(path)


def test_secret_not_matching_public_is_refused(tmp_path: Path) -> None:
    doc = plain_doc()
    doc["public"] = Identity(OTHER_SEED).public_key.hex()
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="does not match"):
        read_key_file(path)


def test_every_truncation_of_a_key_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_key_file(source, Identity(SEED))
    data = source.read_bytes()
    assert data.endswith(b"}\n")
    for n in range(len(data) - 2):  # up to, not including, the closing brace
        with pytest.raises(KeyFileError):
            read_key_file(write_raw(tmp_path / "key", data[:n]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("salt", "00" * 15),
        ("salt", "zz" * 16),
        ("salt", None),
        ("box", None),
        ("box", 5),
        ("opslimit", "2"),
        ("memlimit", None),
        ("memlimit", 1.5),
    ],
)
def test_malformed_encrypted_fields_are_refused(
    tmp_path: Path, encrypted_doc: dict[str, Any], field: str, value: Any
) -> None:
    # All of these are caught before the key derivation runs.
    doc = dict(encrypted_doc)
    if value is None:
        del doc[field]
    else:
        doc[field] = value
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="malformed") as info:
        read_key_file(path, PASSPHRASE)
    assert not isinstance(info.value, PassphraseError)


@pytest.mark.parametrize(
    ("opslimit", "memlimit"),
    [
        (0, None),
        (-1, None),
        (2**70, None),
        (10**6, None),
        (None, 0),
        (None, -1),
        (None, 2**70),
        (None, 2**40),
    ],
)
def test_out_of_range_kdf_limits_are_refused(
    tmp_path: Path, encrypted_doc: dict[str, Any], opslimit: int | None, memlimit: int | None
) -> None:
    doc = dict(encrypted_doc)
    doc["opslimit"] = encrypted_doc["opslimit"] if opslimit is None else opslimit
    doc["memlimit"] = encrypted_doc["memlimit"] if memlimit is None else memlimit
    path = write_doc(tmp_path / "key", doc)
    # Refused before any key derivation: huge limits would otherwise run for hours.
    with pytest.raises(KeyFileError, match="out-of-range KDF limits") as info:
        read_key_file(path, PASSPHRASE)
    assert not isinstance(info.value, PassphraseError)


def test_truncated_box_is_refused(tmp_path: Path, encrypted_doc: dict[str, Any]) -> None:
    doc = dict(encrypted_doc, box=encrypted_doc["box"][:-2])
    path = write_doc(tmp_path / "key", doc)
    with pytest.raises(KeyFileError, match="malformed 'box'") as info:
        read_key_file(path, PASSPHRASE)
    assert not isinstance(info.value, PassphraseError)


def test_oversize_file_is_refused(tmp_path: Path) -> None:
    body = json.dumps(plain_doc())
    path = write_raw(tmp_path / "key", body + " " * (MAX_KEY_FILE_BYTES + 1 - len(body)))
    assert path.stat().st_size == MAX_KEY_FILE_BYTES + 1
    with pytest.raises(KeyFileError, match="too large"):
        read_key_file(path)
    huge = write_raw(tmp_path / "huge", b"{" + b" " * (10 * MAX_KEY_FILE_BYTES))
    with pytest.raises(KeyFileError, match="too large"):
        read_key_file(huge)


def test_file_at_the_size_limit_is_accepted(tmp_path: Path) -> None:
    body = json.dumps(plain_doc())
    path = write_raw(tmp_path / "key", body + " " * (MAX_KEY_FILE_BYTES - len(body)))
    assert path.stat().st_size == MAX_KEY_FILE_BYTES
    assert read_key_file(path).seed == SEED


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    with pytest.raises(KeyFileError):
        read_key_file(path)


# --- fuzz: KeyFileError and nothing else ----------------------------------------------


@fuzz_settings
@given(content=st.binary(max_size=600))
def test_random_bytes_raise_only_key_file_error(tmp_path: Path, content: bytes) -> None:
    path = write_raw(tmp_path / "key", content)
    with pytest.raises(KeyFileError):
        read_key_file(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@fuzz_settings
@given(
    public=json_values | st.just(Identity(SEED).public_key.hex()),
    secret=json_values | st.just(SEED.hex()) | st.just(OTHER_SEED.hex()),
    extra=st.dictionaries(st.sampled_from(["salt", "kdf", "opslimit", "memlimit", "x"]), json_values),
)
def test_random_plain_docs_raise_only_key_file_error(
    tmp_path: Path, public: Any, secret: Any, extra: dict[str, Any]
) -> None:
    # No "box" here: that would run Argon2id with whatever limits were drawn.
    doc = {"format": FORMAT, "type": "ed25519", "public": public, "secret": secret, **extra}
    path = write_doc(tmp_path / "key", doc)
    try:
        ident = read_key_file(path)
    except KeyFileError:
        return
    assert (public, secret) == (Identity(SEED).public_key.hex(), SEED.hex())
    assert ident.seed == SEED
