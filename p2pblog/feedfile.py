"""Feed files: signed entries in a file, for backup and hand-carried transfer.

Format (``docs/protocol.md``)::

    magic    b"p2pblog-feed\\n"  (13 bytes)
    version  0x01               (1 byte)
    then, per entry:
    length   uint32 big-endian  (1 .. MAX_ENTRY_BYTES)
    entry    the signed entry bytes, exactly as stored

The reader is bounded (no length over `MAX_ENTRY_BYTES` is believed) and
raises only `FeedFileError`; whether the entries are valid is for
`Store.ingest_many` to say.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Final

from identity import limits
from p2pblog.errors import P2PBlogError

MAGIC: Final = b"p2pblog-feed\n"
VERSION: Final = 1
_LENGTH: Final = struct.Struct(">I")


class FeedFileError(P2PBlogError):
    """The file is not a p2pblog feed file, or it is truncated or corrupt."""


def write_feed(out: BinaryIO, entries: Iterable[bytes]) -> int:
    """Write the signed entries to out; return how many."""
    out.write(MAGIC + bytes([VERSION]))
    count = 0
    for raw in entries:
        out.write(_LENGTH.pack(len(raw)))
        out.write(raw)
        count += 1
    return count


def read_feed(source: BinaryIO) -> Iterator[bytes]:
    """Yield the signed entries of a feed file; raise `FeedFileError` on a bad frame."""
    header = source.read(len(MAGIC) + 1)
    if header[: len(MAGIC)] != MAGIC:
        raise FeedFileError("not a p2pblog feed file (bad magic)")
    if len(header) != len(MAGIC) + 1 or header[-1] != VERSION:
        raise FeedFileError(f"unsupported feed file version (expected {VERSION})")
    index = 0
    while True:
        prefix = source.read(_LENGTH.size)
        if not prefix:
            return
        if len(prefix) != _LENGTH.size:
            raise FeedFileError(f"feed file is truncated after {index} entries")
        (length,) = _LENGTH.unpack(prefix)
        if not 0 < length <= limits.MAX_ENTRY_BYTES:
            raise FeedFileError(
                f"entry {index + 1} claims {length} bytes; the limit is {limits.MAX_ENTRY_BYTES}"
            )
        raw = source.read(length)
        if len(raw) != length:
            raise FeedFileError(f"feed file is truncated inside entry {index + 1}")
        index += 1
        yield raw
