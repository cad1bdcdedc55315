"""Valid values the harnesses build their seeds from: one fixed author and its entries of every kind.

Harnesses import this module inside their ``atheris.instrument_imports``
block, so the modules it pulls in are instrumented like the ones they name.
The entries are real ones, made by `p2pblog.entry.create_entry`, so a seed
is exactly what an honest peer sends and the fuzzer mutates from there.
"""

from __future__ import annotations

from identity import Identity
from p2pblog.entry import DELETE, FOLLOW, POST, PROFILE, UNFOLLOW, Entry, create_entry

#: The author of every sample entry, and the key the entry harness signs hostile content with.
FUZZ_AUTHOR = Identity(bytes(range(32)))
#: Another key, to follow and mention.
OTHER_KEY = Identity(bytes(range(32, 64))).public_key
#: Sample timestamps start here (2023-11-14, integer milliseconds).
T0_MS = 1_700_000_000_000


def sample_entries() -> list[Entry]:
    """A six-entry feed of `FUZZ_AUTHOR` that uses every kind and every body field."""
    bodies = [
        (PROFILE, {"name": "fuzz", "bio": "a feed of every kind"}),
        (POST, {"text": "hello"}),
        (POST, {"text": "a reply", "mentions": [OTHER_KEY]}),
        (FOLLOW, {"feed": OTHER_KEY}),
        (UNFOLLOW, {"feed": OTHER_KEY}),
        (DELETE, {"target": bytes(32)}),
    ]
    entries: list[Entry] = []
    for seq, (kind, body) in enumerate(bodies, start=1):
        prev = entries[-1].id if entries else None
        if seq == 3:
            body = {**body, "reply_to": entries[-1].id}
        entries.append(
            create_entry(FUZZ_AUTHOR, seq=seq, prev=prev, timestamp=T0_MS + seq, kind=kind, body=body)
        )
    return entries
