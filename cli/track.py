"""Track words and hashtags (issue 19): ``track add|list|remove`` and ``tracked``.

The terms live in the store, so these commands work offline; while the node
runs they go through its control API, so it starts looking the new tags up
in the DHT at once (`p2pblog.track`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import click

from cli.common import call_if_running, current_home, public_key, shown_line
from cli.social import _item_json, _marked, _search_cursor
from identity import decode_handle
from identity.handle import fingerprint
from p2pblog.search import MAX_LIMIT
from p2pblog.store import cursor_of

#: Seconds between two looks at the store by `tracked --follow`, and the posts compared each time.
if TYPE_CHECKING:
    from p2pblog.search import SearchHit
    from p2pblog.store import Store


def _track() -> Any:
    """`p2pblog.track`, imported when a command runs (it loads the node's parts)."""
    from p2pblog import track

    return track


_FOLLOW_EVERY: Final = 0.25
_FOLLOW_WINDOW: Final = 200


@click.group()
def track() -> None:
    """Follow a word or a #hashtag, not a person: see matching posts with `p2pblog tracked`."""


def _change(command: str, term: str) -> tuple[str, bool, list[str]]:
    home = current_home()
    live = call_if_running(home, command, {"term": term})
    if live is not None:
        return str(live["term"]), bool(live["changed"]), list(live["terms"])
    change = _track().add_term if command == "track_add" else _track().remove_term
    with home.open_store() as store:
        try:
            normal, changed = change(store, term)
        except _track().TrackError as exc:
            raise click.ClickException(str(exc)) from None
        return normal, changed, _track().tracked_terms(store)


@track.command("add")
@click.argument("term", metavar="WORD|#tag")
def track_add(term: str) -> None:
    """Track WORD (in any post's text) or #tag (hashtags only); at most 64 terms.

    Terms are normalised (NFKC, case folded).  A running node also looks each
    #tag up in the DHT and fetches matching posts of people you do not follow."""
    normal, changed, _ = _change("track_add", term)
    click.echo(f"{'tracking' if changed else 'already tracking'} {normal}", err=True)


@track.command("remove")
@click.argument("term", metavar="WORD|#tag")
def track_remove(term: str) -> None:
    """Stop tracking WORD or #tag."""
    normal, changed, _ = _change("track_remove", term)
    if not changed:
        raise click.ClickException(f"{normal} is not tracked")
    click.echo(f"stopped tracking {normal}", err=True)


@track.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the terms as a JSON list.")
def track_list(as_json: bool) -> None:
    """List the tracked terms."""
    home = current_home()
    with home.open_store() as store:
        terms = _track().tracked_terms(store)
    if as_json:
        click.echo(json.dumps(terms))
        return
    if not terms:
        click.echo("Nothing tracked: `p2pblog track add WORD|#tag`.", err=True)
    for term in terms:
        click.echo(term)


def _doc(hit: SearchHit, store: Store, own: bytes) -> dict[str, Any]:
    doc = _item_json(hit.item, store, own)
    doc["segments"] = [[segment.text, segment.match] for segment in hit.segments]
    doc["cursor"] = cursor_of(hit.item.entry)
    doc["handle"] = doc["author"]
    return doc


def _echo(doc: dict[str, Any], hit: SearchHit, bold: bool) -> None:
    author = doc["author"]
    who = f"{shown_line(doc['name'])} ({fingerprint(decode_handle(author))})" if doc["name"] else author
    click.echo(f"{who}  {doc['time']}  id {doc['id']}")
    for line in _marked(hit.segments, bold).splitlines() or [""]:
        click.echo(f"    {line}")


@click.command()
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=20,
    show_default=True,
    help=f"How many to show, newest first (1 .. {MAX_LIMIT}).",
)
@click.option(
    "--before", metavar="CURSOR", help='The next page: the "cursor" of the last post shown (--json).'
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of posts, newest first.")
@click.option("--follow", "follow_", is_flag=True, help="Keep printing new matching posts (Ctrl-C stops).")
def tracked(limit: int, before: str | None, as_json: bool, follow_: bool) -> None:
    """Posts with a tracked word or #tag, newest first: from every feed held here, and
    posts of people you do not follow that the running node fetched through the DHT.

    Blocked authors and deleted posts are left out.  With --follow (and --json) each
    new post is printed as one JSON line."""
    home = current_home()
    own = public_key(home)
    cursor = _search_cursor(before)
    bold = sys.stdout.isatty()
    with home.open_store() as store:
        terms = _track().tracked_terms(store)
        if not terms:
            raise click.ClickException("nothing is tracked: `p2pblog track add WORD|#tag`")
        hits = _track().tracked_posts(store, terms, limit=limit, before=cursor)
        docs = [_doc(hit, store, own) for hit in hits]
        if not follow_:
            if as_json:
                click.echo(json.dumps(docs, indent=2))
                return
            if not hits:
                click.echo("No tracked posts yet.", err=True)
            for doc, hit in zip(docs, hits, strict=True):
                _echo(doc, hit, bold)
            return
        seen: set[bytes] = set()
        pending = list(zip(docs, hits, strict=True))[::-1]
        try:
            while True:
                for doc, hit in pending:
                    seen.add(hit.item.entry.id)
                    if as_json:
                        click.echo(json.dumps(doc))
                    else:
                        _echo(doc, hit, bold)
                time.sleep(_FOLLOW_EVERY)
                terms = _track().tracked_terms(store)
                fresh = [
                    h
                    for h in _track().tracked_posts(store, terms, limit=_FOLLOW_WINDOW)
                    if h.item.entry.id not in seen
                ]
                pending = [(_doc(hit, store, own), hit) for hit in fresh[::-1]]
        except KeyboardInterrupt:
            pass


COMMANDS = (track, tracked)
