"""Test helpers: build signed feeds (chains of entries) for any identity."""

from __future__ import annotations

from typing import Any

from identity import Identity
from p2pblog.entry import POST, Entry, create_entry, post_body

T0 = 1_700_000_000_000


def make_chain(
    identity: Identity, count: int, *, start: Entry | None = None, text: str = "post"
) -> list[Entry]:
    """count posts of identity's feed, continuing after start if given."""
    entries: list[Entry] = []
    prev = start
    for _ in range(count):
        seq = 1 if prev is None else prev.seq + 1
        entry = create_entry(
            identity,
            seq=seq,
            prev=None if prev is None else prev.id,
            timestamp=T0 + seq,
            kind=POST,
            body=post_body(f"{text} {seq}"),
        )
        entries.append(entry)
        prev = entry
    return entries


def make_entry(
    identity: Identity, seq: int, prev: bytes | None, kind: str = POST, body: dict[str, Any] | None = None
) -> Entry:
    return create_entry(
        identity,
        seq=seq,
        prev=prev,
        timestamp=T0 + seq,
        kind=kind,
        body=post_body(f"entry {seq}") if body is None else body,
    )
