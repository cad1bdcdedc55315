"""Commands about people: names, petnames, profiles, threads, mentions, blocks, deletes.

Who a command is about is given as a *target* (`resolve_target`): a handle
(``@pb1...``), a petname, ``NAME~FINGERPRINT`` or a NAME claimed in the DHT.
A petname is local and wins over everything; a bare NAME resolves when
exactly one key claims it, or when the best claimant is the only one you
know in its class (you follow it, or people you follow do:
`p2pblog.targets.suggested_claim`); between strangers it never guesses.
Resolving a claimed name asks the running node (it needs the DHT).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from cli.common import (
    LIMIT_HELP,
    call_if_running,
    current_home,
    load_identity,
    now_ms,
    public_key,
    run_command,
    shown,
    shown_line,
    when,
)
from identity import decode_handle, encode_handle
from identity.handle import CHARSET as HANDLE_CHARSET
from identity.handle import FINGERPRINT_CHARS, fingerprint
from identity.limits import NAME_CLAIM_MIN_WORK
from identity.records import RecordError, check_name
from p2pblog import actions, control
from p2pblog.entry import entry_to_json, parse_entry_id
from p2pblog.home import Home
from p2pblog.names import relation_words, witnessed_words
from p2pblog.search import MAX_LIMIT, SearchError, Segment
from p2pblog.store import FeedItem, Store, cursor_of, parse_cursor
from p2pblog.targets import Target, TargetError, parse_target, petname_matches, pick_claims, suggested_claim

#: Most work bits `name claim --work` spends (2**32 hashes is hours of CPU).
MAX_CLAIM_WORK = 32


# --- resolving names --------------------------------------------------------------------------


def _name(text: str, what: str = "NAME") -> str:
    try:
        return check_name(text)
    except RecordError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


def resolve_claims(home: Home, name: str) -> list[dict[str, Any]]:
    """Every valid claim of name in the DHT, in resolution order (asks the running node)."""
    try:
        result = control.call(home.path, "resolve", {"name": name}, timeout=60)
    except control.NodeNotRunning:
        raise click.ClickException(
            f"resolving the name {name!r} needs the DHT: start the node with `{run_command()}`"
        ) from None
    claims: list[dict[str, Any]] = result["claims"]
    return claims


def _pick(name: str, claims: list[dict[str, Any]]) -> str:
    return f"{name}~{claims[0]['fingerprint']}" if claims else name


def _claims_listing(name: str, claims: list[dict[str, Any]]) -> str:
    lines = []
    for i, c in enumerate(claims, 1):
        lines.append(f"  {i}. {name}~{c['fingerprint']}  {c['handle']}{_marks(c)}")
        lines.append(f"       {claim_standing(c)}")
    return "\n".join(lines)


def claim_standing(claim: dict[str, Any]) -> str:
    """One claim's rank in words: relationship, witnessed age, work (`p2pblog.names`)."""
    return (
        f"{relation_words(claim)}; {witnessed_words(claim, time.time())}; "
        f"{claim['work']} bits of work, claimed {when(claim['claimed'] * 1000)}"
    )


def _marks(claim: dict[str, Any]) -> str:
    marks = []
    if claim.get("self"):
        marks.append("you")
    if claim.get("following"):
        marks.append("following")
    marks += [f"petname {p}" for p in claim.get("petnames", [])]
    return f"  [{', '.join(marks)}]" if marks else ""


def _fingerprint(name: str, prefix: str) -> str:
    try:
        return parse_target(f"{name}~{prefix}").prefix
    except TargetError as exc:
        raise click.BadParameter(str(exc)) from None


def _by_fingerprint(name: str, prefix: str, claims: list[dict[str, Any]]) -> bytes:
    """The one claimant of name whose fingerprint starts with prefix (else a clear error)."""
    matches = pick_claims(Target(name=name, prefix=_fingerprint(name, prefix)), claims)
    if not matches:
        raise click.ClickException(f"no claimant of {name!r} has the fingerprint {prefix.lower()}")
    if len(matches) > 1:
        raise click.ClickException(
            f"several claimants of {name!r} have fingerprints starting {prefix.lower()}; give all "
            f"{FINGERPRINT_CHARS} characters:\n{_claims_listing(name, matches)}"
        )
    return decode_handle(matches[0]["handle"])


def looks_like_fingerprint(text: str) -> bool:
    """Whether text has the form of a key's fingerprint (`FINGERPRINT_CHARS` characters of the
    handle alphabet), which users copy from `status` or a timeline for a handle."""
    return len(text) == FINGERPRINT_CHARS and all(c in HANDLE_CHARSET for c in text)


def _not_a_handle(fp: str, home: Home) -> str:
    """What to say about a fingerprint given where a handle or name goes; names the feed held
    here that has it, if there is one."""
    with home.open_store() as store:
        held = [f.author for f in store.feeds() if fingerprint(f.author) == fp]
    if len(held) == 1:
        return f"{fp} is a fingerprint, not a handle; the feed held here with it is {encode_handle(held[0])}"
    return (
        f"{fp} is a fingerprint, not a handle: a fingerprint is too short to name a key. Give the "
        f"handle (@pb1..., from `p2pblog id` on its owner's node), or a claimed name: "
        f"`p2pblog resolve NAME` lists its claimants, and NAME~{fp} picks the one with this fingerprint"
    )


def resolve_target(text: str, home: Home) -> bytes:
    """The key a command argument names: handle, petname, NAME~FINGERPRINT or a claimed NAME
    (`p2pblog.targets`, which the web app's Follow page uses too)."""
    try:
        target = parse_target(text)
    except TargetError as exc:
        raise click.BadParameter(str(exc)) from None
    if target.key is not None:
        return target.key
    name = target.name
    with home.open_store() as store:
        pet = store.petname(name)
    if petname_matches(target, pet):
        assert pet is not None
        return pet
    if target.prefix:
        return _by_fingerprint(name, target.prefix, resolve_claims(home, name))
    if looks_like_fingerprint(name):
        raise click.ClickException(_not_a_handle(name, home))
    claims = resolve_claims(home, name)
    if not claims:
        raise click.ClickException(f"nobody has claimed the name {name!r} (no valid claim found in the DHT)")
    chosen = suggested_claim(claims)
    if chosen is None:
        raise click.ClickException(
            f"{len(claims)} keys claim the name {name!r} and none of them is the one you know; "
            f"not guessing. Pick one with NAME~FINGERPRINT, "
            f"e.g. `{_pick(name, claims)}`:\n{_claims_listing(name, claims)}"
        )
    if len(claims) > 1:
        click.echo(
            f"{len(claims)} keys claim the name {name!r}; taking {name}~{chosen['fingerprint']} "
            f"({claim_standing(chosen)}):\n{_claims_listing(name, claims)}",
            err=True,
        )
    return decode_handle(chosen["handle"])


# --- name ---------------------------------------------------------------------------------------


@click.group()
def name() -> None:
    """Claim names in the DHT and list your claims.

    A name is 1-32 characters of a-z, 0-9, _ and -.  Names are not unique:
    anyone may claim any name, and `p2pblog resolve NAME` lists every
    claimant: people you know first, then the claim the network saw first,
    then most proof of work.
    """


@name.command("claim")
@click.argument("claim_name", metavar="NAME")
@click.option(
    "--work",
    type=click.IntRange(NAME_CLAIM_MIN_WORK, MAX_CLAIM_WORK),
    default=NAME_CLAIM_MIN_WORK,
    show_default=True,
    help="Proof-of-work bits to spend (each bit doubles the time; more work ranks the claim higher).",
)
def claim(claim_name: str, work: int) -> None:
    """Publish a signed claim of NAME in the DHT (node running).

    Computes a proof-of-work stamp (about half a second at the default
    work), then the node stores the claim at the nodes closest to the name
    and republishes it every 4 hours while it runs.  Claiming again reuses
    the stored stamp unless --work asks for more.
    """
    home = current_home()
    claim_name = _name(claim_name)
    own = public_key(home)
    with home.open_store() as store:
        stamp = actions.held_stamp(store, claim_name, work)
    if stamp is None:
        expected = 2**work
        started = time.monotonic()

        terminal = sys.stderr.isatty()  # `\r` progress only where it redraws one line

        def progress(tries: int) -> None:
            if terminal and time.monotonic() - started > 1.0:
                click.echo(
                    f"\rproof of work: {tries:,} hashes (about {expected:,} expected)", nl=False, err=True
                )

        stamp = actions.new_stamp(own, claim_name, work, int(time.time()), progress=progress)
        if terminal and time.monotonic() - started > 1.0:
            click.echo("", err=True)
    claimed, nonce = stamp
    try:
        result = control.call(
            home.path,
            "name_claim",
            {"name": claim_name, "claimed": claimed, "nonce": nonce.hex()},
            timeout=60,
        )
    except control.NodeNotRunning:
        raise click.ClickException(
            f"claiming a name needs the DHT: start the node with `{run_command()}`"
        ) from None
    where = (
        f"stored at {result['stored_at']} node(s)"
        if result["stored_at"]
        else "no other node holds it yet; the node retries"
    )
    click.echo(f"claimed {claim_name!r} with {result['work']} bits of work ({where})", err=True)
    click.echo(f"{claim_name}~{fingerprint(own)}")


@name.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the claims as JSON.")
def list_names(as_json: bool) -> None:
    """List the names this node claims."""
    home = current_home()
    own = public_key(home)
    with home.open_store() as store:
        claims = store.name_claims()
    docs: list[dict[str, Any]] = [
        {"name": n, "pick": f"{n}~{fingerprint(own)}", "claimed": c, "work": w} for n, c, _, w in claims
    ]
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo("No names claimed: `p2pblog name claim NAME`.", err=True)
    for doc in docs:
        click.echo(f"{doc['pick']}  {doc['work']} bits, claimed {when(doc['claimed'] * 1000)}")


@click.command()
@click.argument("target", metavar="NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the claimants as JSON.")
def resolve(target: str, as_json: bool) -> None:
    """List every valid claimant of NAME (node running), in resolution order.

    Order, for you: keys you gave a petname, then keys you follow, then keys
    followed by people you follow, then strangers; within each, the claim the
    network saw first (the time DHT nodes first stored it), then most proof
    of work, then key.  Keys you follow, have a petname for, or that are
    yours are marked, and it says which one `follow NAME` would take, if
    any.  A petname NAME is shown first: it overrides the DHT.
    NAME~FINGERPRINT shows the one claimant with that fingerprint.  Exits 1
    if nothing matches.
    """
    home = current_home()
    name_part, tilde, prefix = target.partition("~")
    claim_name = _name(name_part)
    if tilde:
        prefix = _fingerprint(claim_name, prefix)
    with home.open_store() as store:
        pet = store.petname(claim_name)
    try:
        claims = resolve_claims(home, claim_name)
    except click.ClickException:
        if pet is None:
            raise
        # The petname answers without the DHT (it overrides it anyway).
        click.echo("(no node running: the DHT's claims of this name were not looked up)", err=True)
        claims = []
    if tilde:
        if pet is not None and fingerprint(pet).startswith(prefix):
            key = pet
        else:
            pet = None
            key = _by_fingerprint(claim_name, prefix, claims)  # exits 1 unless exactly one matches
        claims = [c for c in claims if c["handle"] == encode_handle(key)]
    doc = {
        "name": claim_name,
        "petname": encode_handle(pet) if pet is not None else None,
        "claims": [{**c, "pick": f"{claim_name}~{c['fingerprint']}"} for c in claims],
    }
    chosen = suggested_claim(claims) if claims and pet is None else None
    doc["suggested"] = None if chosen is None else chosen["handle"]
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        if pet is not None:
            click.echo(f"petname {claim_name}: {encode_handle(pet)}  (local; overrides the DHT)")
        if claims:
            click.echo(
                f"{claim_name}: {len(claims)} claimant(s), people you know first, then the claim "
                "the network saw first, then most work",
                err=True,
            )
            click.echo(_claims_listing(claim_name, claims))
            if len(claims) > 1:
                click.echo(
                    f"`follow {claim_name}` takes {claim_name}~{chosen['fingerprint']}, the one you know"
                    if chosen is not None
                    else f"`follow {claim_name}` picks none of them: none is a key you know",
                    err=True,
                )
    if not claims and pet is None:
        raise click.ClickException(f"no valid claim of {claim_name!r} found")


# --- petnames -----------------------------------------------------------------------------------


@click.group()
def petname() -> None:
    """Local names for keys.  They override names claimed in the DHT, and only you see them."""


@petname.command("set")
@click.argument("pet", metavar="NAME")
@click.argument("handle")
def petname_set(pet: str, handle: str) -> None:
    """Call HANDLE by NAME on this node (replaces an earlier petname NAME)."""
    home = current_home()
    pet = _name(pet)
    key = decode_handle(handle)
    with home.open_store() as store:
        old = store.petname(pet)
        store.set_petname(pet, key)
    note = f" (was {encode_handle(old)})" if old is not None and old != key else ""
    click.echo(f"petname {pet} -> {encode_handle(key)}{note}", err=True)


@petname.command("remove")
@click.argument("pet", metavar="NAME")
def petname_remove(pet: str) -> None:
    """Forget the petname NAME."""
    home = current_home()
    with home.open_store() as store:
        if not store.remove_petname(_name(pet)):
            raise click.ClickException(f"no petname {pet!r}")
    click.echo(f"removed petname {pet}", err=True)


@petname.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the petnames as JSON.")
def petname_list(as_json: bool) -> None:
    """List petnames and the keys they name."""
    home = current_home()
    with home.open_store() as store:
        pets = store.petnames()
    docs = [{"name": n, "handle": encode_handle(k), "fingerprint": fingerprint(k)} for n, k in pets]
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo("No petnames: `p2pblog petname set NAME HANDLE`.", err=True)
    for doc in docs:
        click.echo(f"{doc['name']}  {doc['handle']}")


# --- profile ------------------------------------------------------------------------------------


@click.group()
def profile() -> None:
    """Set your profile (display name, bio) and show anyone's."""


@profile.command("set")
@click.option("--name", "display", help="Display name (up to 64 characters).")
@click.option("--bio", help="A short bio (up to 280 characters).")
def profile_set(display: str | None, bio: str | None) -> None:
    """Append a profile entry to your feed; followers see it as it replicates."""
    home = current_home()
    fields = {k: v for k, v in (("name", display), ("bio", bio)) if v is not None}
    if not fields:
        raise click.UsageError("give --name and/or --bio")
    live = call_if_running(home, "profile_set", fields)
    if live is None:
        with home.open_store() as store:
            entry = actions.set_profile(store, load_identity(home), fields, now_ms())
        seq = entry.seq
    else:
        seq = live["seq"]
    click.echo(f"profile updated (#{seq}): " + ", ".join(f"{k}: {v}" for k, v in fields.items()), err=True)


@profile.command("show")
@click.argument("target", metavar="HANDLE|NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def profile_show(target: str, as_json: bool) -> None:
    """Show the profile of HANDLE (or a petname, NAME~FINGERPRINT, or a claimed NAME).

    Profiles travel in feeds: the profile of a key you neither follow nor
    are is not stored here until you follow it.
    """
    home = current_home()
    key = resolve_target(target, home)
    with home.open_store() as store:
        fields = store.profile(key)
        known = store.latest_seq(key) > 0
    doc = {
        "handle": encode_handle(key),
        "fingerprint": fingerprint(key),
        "name": fields.get("name"),
        "bio": fields.get("bio"),
        "feed_stored": known,
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(doc["handle"])
    if not known:
        click.echo("  (no entries of this feed are stored here: follow it to get its profile)", err=True)
    elif not fields:
        click.echo("  (no profile set)", err=True)
    for field in ("name", "bio"):
        if doc[field] is not None:
            click.echo(f"  {field}: {shown_line(str(doc[field]))}")


# --- threads and mentions -----------------------------------------------------------------------


def _item_json(item: FeedItem, store: Store, own: bytes, depth: int | None = None) -> dict[str, Any]:
    doc = entry_to_json(item.entry, retracted=item.deleted)
    doc["time"] = when(item.entry.timestamp)
    doc["name"] = store.profile(item.entry.author).get("name")
    doc["following"] = item.entry.author in store.following(own)
    if depth is not None:
        doc["depth"] = depth
    return doc


def _echo_post(doc: dict[str, Any], indent: str = "", marker: str = "") -> None:
    author = doc["author"]
    who = f"{shown_line(doc['name'])} ({fingerprint(decode_handle(author))})" if doc["name"] else author
    click.echo(f"{indent}{marker}{who}  {doc['time']}  id {doc['id']}")
    if doc.get("deleted"):
        click.echo(f"{indent}    (deleted by its author)")
    else:
        for line in (doc["text"] or "").splitlines() or [""]:
            click.echo(f"{indent}    {shown(line)}")


@click.command()
@click.argument("entry_id", metavar="ENTRY_ID")
@click.option("--json", "as_json", is_flag=True, help="Print the thread as JSON.")
def thread(entry_id: str, as_json: bool) -> None:
    """Show a post with the posts it replies to and the replies known locally.

    A post whose parent has not arrived is shown as a reply to an unknown
    post; it is linked once the parent arrives.
    """
    home = current_home()
    try:
        eid = parse_entry_id(entry_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ENTRY_ID") from None
    own = public_key(home)
    with home.open_store() as store:
        found = store.thread(eid)
        if found is None:
            raise click.ClickException(f"no entry {entry_id} is stored here")
        ancestors = [_item_json(i, store, own) for i in found.ancestors]
        root = _item_json(found.entry, store, own)
        depth = {eid: 0}
        replies: list[dict[str, Any]] = []
        for item in found.replies:  # by time: a parent comes before its replies
            d = depth.get(item.entry.reply_to or b"", 0) + 1
            depth[item.entry.id] = d
            replies.append(_item_json(item, store, own, d))
    missing = found.missing_parent.hex() if found.missing_parent else None
    if as_json:
        whole = {"entry": root, "ancestors": ancestors, "replies": replies, "missing_parent": missing}
        click.echo(json.dumps(whole, indent=2))
        return
    if missing:
        click.echo(f"(reply to an unknown post {missing})")
    for doc in ancestors:
        _echo_post(doc)
    _echo_post(root, marker="> ")
    for doc in replies:
        _echo_post(doc, indent="  " * doc["depth"], marker="↳ ")


@click.command()
@click.option(
    "--limit", "-n", type=click.IntRange(min=1, max=10_000), default=20, show_default=True, help=LIMIT_HELP
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of posts, newest first.")
def mentions(limit: int, as_json: bool) -> None:
    """Show posts that mention you, newest first, including from people you do not follow.

    Mentions from people you do not follow arrive as mention notices the
    running node admits (see `p2pblog run --help`); blocked keys are left out.
    """
    home = current_home()
    own = public_key(home)
    with home.open_store() as store:
        docs = [_item_json(i, store, own) for i in store.mentions(own, limit=limit)]
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo("No mentions yet.", err=True)
    for doc in docs:
        _echo_post(doc)
        if doc["reply_to"]:
            click.echo(f"    (reply to {doc['reply_to']})")


# --- search ----------------------------------------------------------------------------------


def _marked(segments: tuple[Segment, ...], bold: bool) -> str:
    """A post's text with the matches in bold (a terminal) or in [brackets] (anything else)."""
    parts = []
    for segment in segments:
        text = shown(segment.text)
        if segment.match:
            text = click.style(text, bold=True, underline=True) if bold else f"[{text}]"
        parts.append(text)
    return "".join(parts)


@click.command()
@click.argument("query", nargs=-1, required=True)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=20,
    show_default=True,
    help=f"How many to show, newest first (1 .. {MAX_LIMIT}).",
)
@click.option(
    "--before",
    metavar="CURSOR",
    help='The next page: the "cursor" of the last post shown (--json), or a time in ms.',
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of posts, newest first.")
def search(query: tuple[str, ...], limit: int, before: str | None, as_json: bool) -> None:
    """Search every post held here (your feed, followed feeds, mention notices), newest first.

    \b
    QUERY terms, all of which must match (case and accents do not matter):
      word            the word (the last word also as a prefix: pyth finds python)
      "a phrase"      these words in this order (quote it for the shell too)
      #tag            posts with the hashtag #tag
      @name           posts that write @name, or mention a key whose petname or
                      profile name is name (@pb1... for a handle)
      from:X          posts by X: a handle, a petname or a profile name
    Other characters are searched as text, never as operators.

    \b
    Examples:
      p2pblog search rust async
      p2pblog search '"peer to peer"' from:alice
      p2pblog search '#p2p' @bob --json

    Reads the local store, with or without the node running.  Matches are shown
    in bold on a terminal and in [brackets] otherwise; --json gives each post's
    text as "segments": [text, is_match] pairs, and a "cursor" for --before
    (time.author.seq: posts stamped in the same millisecond are not skipped).
    Blocked authors and deleted posts are left out.
    """
    home = current_home()
    own = public_key(home)
    cursor = _search_cursor(before)
    with home.open_store() as store:
        try:
            hits = store.search(" ".join(query), limit=limit, before=cursor)
        except SearchError as exc:
            raise click.ClickException(str(exc)) from None
        docs = []
        for hit in hits:
            doc = _item_json(hit.item, store, own)
            doc["segments"] = [[segment.text, segment.match] for segment in hit.segments]
            doc["cursor"] = cursor_of(hit.item.entry)
            docs.append(doc)
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not hits:
        click.echo("No posts found.", err=True)
    bold = sys.stdout.isatty()
    for doc, hit in zip(docs, hits, strict=True):
        author = doc["author"]
        who = f"{shown_line(doc['name'])} ({fingerprint(decode_handle(author))})" if doc["name"] else author
        click.echo(f"{who}  {doc['time']}  id {doc['id']}")
        for line in _marked(hit.segments, bold).splitlines() or [""]:
            click.echo(f"    {line}")


def _search_cursor(text: str | None) -> int | tuple[int, bytes, int] | None:
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    cursor = parse_cursor(text)
    if cursor is not None:
        return cursor
    raise click.BadParameter(
        "a cursor is TIME.AUTHOR.SEQ (as --json prints it), or a time in ms", param_hint="--before"
    )


# --- blocks and deletes -------------------------------------------------------------------------


def _block_target(target: str, home: Home) -> bytes:
    key = resolve_target(target, home)
    if key == public_key(home):
        raise click.ClickException("that is your own key")
    return key


@click.command()
@click.argument("target", metavar="HANDLE")
def block(target: str) -> None:
    """Block HANDLE: refuse its entries, mentions and connections, and unfollow it."""
    home = current_home()
    key = _block_target(target, home)
    live = call_if_running(home, "block", {"handle": encode_handle(key)})
    if live is None:
        with home.open_store() as store:
            new, unfollowed = actions.block(store, load_identity(home), key, now_ms())
    else:
        new, unfollowed = live["changed"], live["unfollowed"]
    note = " and unfollowed it" if unfollowed else ""
    click.echo(f"{'blocked' if new else 'already blocked'} {encode_handle(key)}{note}", err=True)


@click.command()
@click.argument("target", metavar="HANDLE")
def unblock(target: str) -> None:
    """Unblock HANDLE (it is not followed again by itself)."""
    home = current_home()
    key = _block_target(target, home)
    live = call_if_running(home, "unblock", {"handle": encode_handle(key)})
    if live is None:
        with home.open_store() as store:
            changed = store.unblock(key)
    else:
        changed = live["changed"]
    click.echo(f"{'unblocked' if changed else 'was not blocked:'} {encode_handle(key)}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the blocked keys as JSON.")
def blocks(as_json: bool) -> None:
    """List blocked keys, oldest block first."""
    home = current_home()
    with home.open_store() as store:
        rows = store.blocks()
    docs: list[dict[str, Any]] = [
        {"handle": encode_handle(k), "fingerprint": fingerprint(k), "since": s} for k, s in rows
    ]
    if as_json:
        click.echo(json.dumps(docs, indent=2))
        return
    if not docs:
        click.echo("Nobody is blocked.", err=True)
    for doc in docs:
        click.echo(f"{doc['handle']}  since {when(doc['since'])}")


@click.command()
@click.argument("entry_id", metavar="ENTRY_ID")
def delete(entry_id: str) -> None:
    """Delete one of your posts: append a delete entry that retracts its text.

    Followers stop showing the text as the delete replicates; the entry
    itself stays in the hash chain (its id and signature), as a feed is
    append-only.  Keys the post mentioned are told too.
    """
    home = current_home()
    try:
        target = parse_entry_id(entry_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ENTRY_ID") from None
    live = call_if_running(home, "delete", {"id": target.hex()})
    if live is None:
        with home.open_store() as store:
            entry = actions.delete(store, load_identity(home), target, now_ms())
        seq, eid = entry.seq, entry.id.hex()
    else:
        seq, eid = live["seq"], live["id"]
    click.echo(f"deleted post {target.hex()[:16]}.. (delete entry #{seq})", err=True)
    click.echo(eid)


COMMANDS = (name, resolve, petname, profile, thread, mentions, search, block, unblock, blocks, delete)
