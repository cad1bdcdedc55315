"""Key files: an identity's secret seed on disk, optionally passphrase-encrypted.

Format (UTF-8 JSON, so a user can see what kind of file it is)::

    {"format": "p2pblog-key/1", "type": "ed25519", "public": HEX, "secret": HEX}

or, encrypted::

    {"format": "p2pblog-key/1", "type": "ed25519", "public": HEX,
     "kdf": "argon2id", "opslimit": N, "memlimit": N, "salt": HEX,
     "box": HEX}

``box`` is ``nacl.secret.SecretBox`` (XSalsa20-Poly1305, nonce prepended) of
the 32-byte seed, keyed by Argon2id(passphrase, salt).  libsodium's
"interactive" limits are the default because the CLI unlocks the key on every
signing command; they are stored in the file so they can be raised later.

The file is created with mode 0600 (never wider, whatever the umask) and
loading refuses a file that others can read, as ssh does.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from identity.keys import Identity

FORMAT = "p2pblog-key/1"
MAX_KEY_FILE_BYTES = 4096


class KeyFileError(Exception):
    """The key file is missing, unreadable, malformed or has unsafe permissions."""


class PassphraseError(KeyFileError):
    """The key file is encrypted and the passphrase is missing or wrong."""


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    import nacl.pwhash.argon2id as argon2id
    import nacl.secret

    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE,
        passphrase.encode("utf-8"),
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )


def write_key_file(path: Path, identity: Identity, passphrase: str | None = None) -> None:
    """Create path holding identity; refuse to overwrite an existing file."""
    # Argon2id and SecretBox only for encrypted keys (a command reading a plain key file
    # does not load them: 10 ms of start-up).
    import nacl.pwhash.argon2id as argon2id
    import nacl.secret
    import nacl.utils

    doc: dict[str, Any] = {
        "format": FORMAT,
        "type": "ed25519",
        "public": identity.public_key.hex(),
    }
    if passphrase is None:
        doc["secret"] = identity.seed.hex()
    else:
        if not passphrase:
            raise PassphraseError("the passphrase is empty")
        salt = nacl.utils.random(argon2id.SALTBYTES)
        ops, mem = argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE
        box = nacl.secret.SecretBox(_derive(passphrase, salt, ops, mem))
        doc.update(
            kdf="argon2id",
            opslimit=ops,
            memlimit=mem,
            salt=salt.hex(),
            box=bytes(box.encrypt(identity.seed)).hex(),
        )
    data = (json.dumps(doc, indent=1) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"a key file already exists at {path}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def key_file_is_encrypted(path: Path) -> bool:
    return "box" in _read_doc(path)


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {path}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is too large to be a key file")
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"key file {path} is unreadable: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise KeyFileError(f"{path} is not a p2pblog key file (it is not the JSON one holds)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("type") != "ed25519":
        raise KeyFileError(f"{path} is not a p2pblog key file")
    return doc


def _hex_field(doc: dict[str, Any], name: str, size: int | None, path: Path) -> bytes:
    value = doc.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size):
        raise KeyFileError(f"key file {path} has a malformed {name!r} field")
    return raw


def read_public_key(path: Path) -> bytes:
    """The public key recorded in a key file, without unlocking it."""
    return _hex_field(_read_doc(path), "public", 32, path)


def read_key_file(path: Path, passphrase: str | None = None) -> Identity:
    """Load the identity in path, decrypting with passphrase if needed."""
    doc = _read_doc(path)
    public = _hex_field(doc, "public", 32, path)
    if "box" in doc:
        if passphrase is None:
            raise PassphraseError(f"key file {path} is encrypted; a passphrase is needed")
        import nacl.exceptions
        import nacl.pwhash.argon2id as argon2id
        import nacl.secret

        salt = _hex_field(doc, "salt", argon2id.SALTBYTES, path)
        box_bytes = _hex_field(doc, "box", None, path)
        ops, mem = doc.get("opslimit"), doc.get("memlimit")
        # Bounded by libsodium's presets: a crafted file must not make loading
        # run Argon2id for hours or allocate unbounded memory.
        if not (
            isinstance(ops, int)
            and isinstance(mem, int)
            and argon2id.OPSLIMIT_MIN <= ops <= argon2id.OPSLIMIT_SENSITIVE
            and argon2id.MEMLIMIT_MIN <= mem <= argon2id.MEMLIMIT_SENSITIVE
        ):
            raise KeyFileError(f"key file {path} has malformed or out-of-range KDF limits")
        if len(box_bytes) != nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES + 32:
            raise KeyFileError(f"key file {path} has a malformed 'box' field")
        try:
            seed = nacl.secret.SecretBox(_derive(passphrase, salt, ops, mem)).decrypt(box_bytes)
        except nacl.exceptions.CryptoError:
            raise PassphraseError("wrong passphrase for the key file") from None
    else:
        seed = _hex_field(doc, "secret", 32, path)
    try:
        identity = Identity(seed)
    except ValueError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from None
    if identity.public_key != public:
        raise KeyFileError(f"key file {path} is corrupt: the secret does not match the public key")
    return identity
