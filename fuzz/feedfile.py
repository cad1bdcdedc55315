"""Fuzz `p2pblog.feedfile.read_feed`: arbitrary bytes as a feed file someone handed us.

Run: ``python fuzz/feedfile.py [libFuzzer flags] [corpus dirs]`` (see ``fuzz/launch.py``).

The contract: reading the whole file yields entry byte strings or raises
`FeedFileError`; any other exception is a crash.  Each yielded entry is
then decoded as ``p2pblog import`` does before `Store.ingest_many`
(`decode_entry`: an `Entry` or an `EntryError`).  A file that reads to the
end round-trips: `write_feed` of its entries gives back exactly its bytes
(the format has one encoding per list of entries).
"""

from __future__ import annotations

import contextlib
import io
import sys

import atheris
from launch import run, use_checkout

use_checkout()

with atheris.instrument_imports(include=["p2pblog", "identity"]):
    from samples import sample_entries

    from identity import limits
    from p2pblog.entry import decode_entry
    from p2pblog.errors import EntryError
    from p2pblog.feedfile import MAGIC, VERSION, FeedFileError, read_feed, write_feed

#: Room for a few entries of the largest size.
MAX_LEN = 4 * limits.MAX_ENTRY_BYTES


def check(data: bytes) -> None:
    entries: list[bytes] = []
    try:
        for raw in read_feed(io.BytesIO(data)):
            assert 0 < len(raw) <= limits.MAX_ENTRY_BYTES
            entries.append(raw)
    except FeedFileError:
        pass
    else:
        out = io.BytesIO()
        assert write_feed(out, entries) == len(entries)
        assert out.getvalue() == data, "a feed file that reads whole does not write back the same"
    for raw in entries:
        with contextlib.suppress(EntryError):
            decode_entry(raw)


def seeds() -> list[bytes]:
    """An empty feed file, a whole sample feed, and one entry of it."""
    raws = [entry.raw for entry in sample_entries()]
    files = []
    for entries in ([], raws, raws[:1]):
        out = io.BytesIO()
        write_feed(out, entries)
        files.append(out.getvalue())
    return [*files, MAGIC + bytes([VERSION])]


def main() -> None:
    run("feedfile", check, seeds=seeds(), max_len=MAX_LEN)


if __name__ == "__main__":
    sys.exit(main())
