"""`p2pblog followers` (issue 19) without a running node: the store's follow entries only;
and the profile page's capped list.

Feeds move between homes as signed feed files (``export`` / ``import``), so the
follow and unfollow entries counted are real, verified entries in an on-disk
store; the counting rules (`p2pblog.followers`) get direct tests beside them.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from identity import Identity
from p2pblog.entry import FOLLOW, UNFOLLOW
from p2pblog.followers import count_followers, summary
from p2pblog.store import Store
from tests.nodes import cli_json, init_home, run
from tests.process import p2pblog
from web.app import FOLLOWERS_SHOWN, People, followers_context


def carry(src: Path, handle: str, dst: Path, tmp_path: Path) -> None:
    """Copy src's copy of handle's feed into dst, as a signed feed file."""
    file = tmp_path / "feed.p2pblog"
    run(src, "export", handle, str(file))
    run(dst, "import", str(file))
    file.unlink()


def test_offline_followers_come_from_follow_entries_held_here(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    ha, hb, _hc = init_home(a), init_home(b), init_home(c)
    run(b, "profile", "set", "--name", "Bob")
    run(b, "follow", ha)
    run(c, "follow", ha)  # C's feed never reaches A: invisible offline
    carry(b, hb, a, tmp_path)

    doc = cli_json(a, "followers")
    assert isinstance(doc, dict)
    assert set(doc) == {
        "handle", "fingerprint", "count", "from_entries", "from_dht", "in_both", "dht_asked", "searched",
        "fresh", "unfollowed", "holders", "connected", "summary", "copies", "followers", "more",
    }  # fmt: skip
    assert doc["handle"] == ha
    assert set(doc["followers"][0]) == {
        "handle", "fingerprint", "petname", "name", "entry", "provider", "source",
    }  # fmt: skip
    assert [(f["handle"], f["name"], f["source"]) for f in doc["followers"]] == [(hb, "Bob", "follow entry")]
    assert (doc["count"], doc["from_entries"], doc["from_dht"], doc["dht_asked"]) == (1, 1, 0, False)
    assert doc["holders"] is None

    # The same by a petname, and as text: the count says the DHT was not asked.
    run(a, "petname", "set", "alice", ha)
    result = p2pblog(a, "followers", "alice")
    assert result.returncode == 0, result.stderr
    assert hb in result.stdout and "Bob" in result.stdout
    assert "at least 1 follower (from follow entries held here; the DHT was not asked" in result.stdout

    # B unfollows; once A holds the unfollow entry, B is no longer counted.
    run(b, "unfollow", ha)
    carry(b, hb, a, tmp_path)
    doc = cli_json(a, "followers", ha)
    assert isinstance(doc, dict)
    assert (doc["count"], doc["followers"]) == (0, [])


def test_a_stale_provider_record_of_an_unfollower_is_left_out(tmp_path: Path) -> None:
    feed, me = Identity.generate(), Identity.generate()
    gone, stays, fan = Identity.generate(), Identity.generate(), Identity.generate()
    with Store(tmp_path / "s.sqlite") as store:
        key = feed.public_key
        now_ms = 1_700_000_000_000
        store.append(gone, FOLLOW, {"feed": key}, now_ms)
        store.append(gone, UNFOLLOW, {"feed": key}, now_ms + 1)
        store.append(fan, FOLLOW, {"feed": key}, now_ms)
        store.append(me, FOLLOW, {"feed": key}, now_ms)  # our own key is never counted
        found = count_followers(
            store,
            key,
            me.public_key,
            providers=[gone.public_key, stays.public_key, fan.public_key, key, me.public_key],
            connected=[stays.public_key],
            searched=1.0,
        )
    assert [(f.key, f.source) for f in found.followers] == [
        (fan.public_key, "both"),
        (stays.public_key, "DHT provider record"),
    ]
    assert found.unfollowed == 1
    # gone still holds a copy (its provider record says so); the author's own record does not count.
    assert found.holders == 3
    assert summary(found) == (
        "at least 2 followers (1 from follow entries held here, 2 providers in the DHT, 1 in both)"
    )


def test_the_profile_page_caps_its_followers_list(tmp_path: Path) -> None:
    feed, me = Identity.generate(), Identity.generate()
    fans = [Identity.generate() for _ in range(FOLLOWERS_SHOWN + 5)]
    with Store(tmp_path / "s.sqlite") as store:
        for fan in fans:
            store.append(fan, FOLLOW, {"feed": feed.public_key}, 1_700_000_000_000)
        found = count_followers(store, feed.public_key, me.public_key)
        doc = found.to_json(store)
        people = People(store)
        env = Environment(
            loader=FileSystemLoader(str(Path(__file__).parent.parent / "web" / "templates")),
            autoescape=select_autoescape(default=True),
        )
        page = env.get_template("profile.html").render(
            person=people(feed.public_key),
            me=people(me.public_key),
            posts=[],
            unread=0,
            dm_unread=0,
            path="/",
            **followers_context(doc, people),
        )
    assert "at least 25 followers (from follow entries held here; the DHT was not asked" in page
    assert page.count("(follow entry)") == FOLLOWERS_SHOWN
    assert "and 5 more" in page
