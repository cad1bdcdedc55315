"""`p2pblog followers [HANDLE] [--json]`: who follows a feed, as far as this node can tell.

With a node running, the node searches the DHT for the feed's providers
(throttled as the web app's "Search the DHT now" is) and counts them with the
follow entries held here; offline, only the store is read and the output says
the DHT was not asked.  `p2pblog.followers` holds the counting and wording.
"""

from __future__ import annotations

import json
import time

import click

from cli.common import current_home, public_key, shown_line
from cli.social import resolve_target
from identity import encode_handle
from p2pblog import control

#: Seconds the command waits for the node (its provider search takes up to 10).
FOLLOWERS_TIMEOUT = 30.0


@click.command()
@click.argument("target", metavar="[HANDLE]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the followers as a JSON object.")
def followers(target: str | None, as_json: bool) -> None:
    """List the keys known to follow HANDLE (default: you), or a petname, NAME~FINGERPRINT
    or a claimed NAME: from follow entries held here and, with the node running, from the
    feed's provider records in the DHT.  The count is a lower bound."""
    home = current_home()
    key = public_key(home) if target is None else resolve_target(target, home)
    try:
        doc = control.call(
            home.path, "followers", {"handle": encode_handle(key), "search": True}, timeout=FOLLOWERS_TIMEOUT
        )
    except control.NodeNotRunning:
        with home.open_store() as store:
            from p2pblog.followers import count_followers  # (loads the node's parts: not for --help)

            doc = count_followers(store, key, public_key(home)).to_json(store)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"followers of {doc['handle']}")
    for f in doc["followers"]:
        names = [n for n in (f["petname"], f["name"]) if n]
        named = f"  {shown_line(' / '.join(dict.fromkeys(names)))}" if names else ""
        click.echo(f"  {f['handle']}{named}  [{f['source']}]")
    if doc["more"]:
        click.echo(f"  and {doc['more']} more")
    click.echo(doc["summary"])
    if doc["dht_asked"]:
        from p2pblog.discovery import REPLICA_SEARCH_EVERY  # (loads the node's parts: not for --help)

        if doc["searched"] is None:
            click.echo(
                f"  (no provider search of this feed yet: searches run at most every "
                f"{REPLICA_SEARCH_EVERY:g} s; ask again in a moment)"
            )
        elif not doc["fresh"]:
            ago = max(0, round(time.time() - doc["searched"]))
            click.echo(
                f"  (the DHT answer is from a search {ago} s ago: searches run at most every "
                f"{REPLICA_SEARCH_EVERY:g} s)"
            )
        if doc["unfollowed"]:
            click.echo(f"  ({doc['unfollowed']} DHT providers left out: their feeds held here unfollowed it)")
    click.echo(doc["copies"])


COMMANDS = (followers,)
