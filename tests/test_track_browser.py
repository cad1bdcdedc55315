"""The Tracked page (issue 19) in a real browser: headless chromium against real nodes.

Uses the nodes and browser of `tests.test_web_browser` (alice, bob, carol: carol does not
follow alice).  Carol tracks a tag on the page; alice posts it; carol's open page shows
the post live, fetched through the DHT from a stranger.
"""

from __future__ import annotations

import pytest

from tests.nodes import cli_json
from tests.test_web_browser import Net, live, mark_page, net, same_page, submit

pytestmark = pytest.mark.slow
__all__ = ["net"]


def test_a_tag_tracked_on_the_page_brings_a_strangers_post_live(net: Net) -> None:
    c = net.page(net.c, "/tracked")
    assert c.locator("h1").inner_text() == "Tracked"
    c.locator("#track-term").fill("#BrowserTrack")
    submit(c, c.locator("form[action='/track'] button[type=submit]"))
    assert c.locator("ul.terms li", has_text="#browsertrack").count() == 1
    assert cli_json(net.c.home, "track", "list") == ["#browsertrack"]
    live(c)
    mark_page(c)
    a = net.page(net.a)
    a.locator("#compose-text").fill("seen by a stranger #browsertrack")
    a.locator("#compose button[type=submit]").click()
    mine = a.locator("#timeline article.post", has_text="seen by a stranger")
    mine.wait_for()
    post_id = mine.get_attribute("data-id")
    c.locator(f"#p-{post_id}").wait_for()  # fetched through the DHT, inserted live
    assert "seen by a stranger" in c.locator(f"#p-{post_id} .text").inner_text()
    assert same_page(c), "the Tracked page navigated instead of inserting the post"
    # Removing the term (a form, no script needed) empties the list.
    submit(c, c.locator("ul.terms button", has_text="Remove"))
    assert c.locator("ul.terms li").count() == 0 and "Nothing tracked yet" in c.inner_text("main")
    assert not net.page_errors, net.page_errors
    a.context.close()
    c.context.close()
