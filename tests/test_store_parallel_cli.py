"""``p2pblog import`` of a feed long enough for the parallel path, as a user runs it."""

from __future__ import annotations

from pathlib import Path

from identity import Identity, encode_handle
from p2pblog.feedfile import write_feed
from p2pblog.store import VERIFY_CHUNK
from tests.feeds import make_chain
from tests.process import p2pblog
from tests.test_cli import assert_one_line_error, init, log_json, post
from tests.test_store_parallel import forged

ALICE = Identity(bytes([2]) * 32)
COUNT = 3 * VERIFY_CHUNK + 40


def test_import_of_a_long_feed_with_a_forgery_keeps_exactly_the_prefix(tmp_path: Path) -> None:
    bob = tmp_path / "bob"
    init(bob)
    post(bob, "my own feed is not empty, so import checks the file for versions of it")
    raws = [e.raw for e in make_chain(ALICE, COUNT)]
    where = 2 * VERIFY_CHUNK + 7
    raws[where] = forged(raws[where])
    feed = tmp_path / "alice.feed"
    with feed.open("wb") as out:
        write_feed(out, raws)

    result = p2pblog(bob, "import", str(feed))
    assert_one_line_error(result, "signature")
    assert f"imported {where} new entries (0 already present)" in result.stdout
    assert f"refused {COUNT - where} entries from entry {where + 1} on" in result.stderr
    handle = encode_handle(ALICE.public_key)
    assert log_json(bob, handle)[0]["seq"] == where
    assert p2pblog(bob, "verify", handle).returncode == 0

    # The real entry in its place: the rest comes in.
    with feed.open("wb") as out:
        write_feed(out, (e.raw for e in make_chain(ALICE, COUNT)))
    again = p2pblog(bob, "import", str(feed))
    assert again.returncode == 0, again.stderr
    assert f"imported {COUNT - where} new entries ({where} already present)" in again.stdout
