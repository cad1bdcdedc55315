"""identity: Ed25519 keys, key files, handles and fingerprints.

The bottom layer of p2pblog: every other package may import it, it imports
none of them.
"""

from __future__ import annotations

from identity.handle import HandleError, decode_handle, encode_handle, fingerprint, is_handle
from identity.keyfile import KeyFileError, PassphraseError, read_key_file, write_key_file
from identity.keys import Identity, SignatureError, verify, verify_detached

__all__ = [
    "HandleError",
    "Identity",
    "KeyFileError",
    "PassphraseError",
    "SignatureError",
    "decode_handle",
    "encode_handle",
    "fingerprint",
    "is_handle",
    "read_key_file",
    "verify",
    "verify_detached",
    "write_key_file",
]
