"""Errors shared by every layer.

`LocalProtocolError` lives here, in the bottom layer, so that `dht` and
`gossip` can raise it without importing `p2pblog` (the import direction is
``cli -> p2pblog -> {dht, gossip} -> identity``).
"""

from __future__ import annotations


class LocalProtocolError(Exception):
    """Our own code used an API wrongly (a bug, not a peer's fault), as in h11."""
