"""What the CLI prints of other people's data never raises and never reaches the terminal
raw: times (`cli.common.when`) over every accepted timestamp, and text (`cli.common.shown`)
over arbitrary Unicode."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from cli.common import MAX_MARK_RUN, shown, shown_line, when
from identity import read_key_file
from identity.limits import MAX_TIMESTAMP_MS
from p2pblog.entry import POST, create_entry, post_body
from p2pblog.store import Store
from tests.process import p2pblog

#: datetime's range, where `when` must agree with it.
_DATETIME_MIN_MS = (
    int((datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1000
)
_DATETIME_MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1000 + 999

HIDDEN = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}


@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP_MS))
def test_when_is_total_over_every_accepted_timestamp(ms: int) -> None:
    text = when(ms)
    assert text.endswith(" UTC")
    if ms <= _DATETIME_MAX_MS:
        d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        assert text == f"{d.year:04d}-{d:%m-%d %H:%M:%S} UTC"


@given(st.integers(min_value=_DATETIME_MIN_MS, max_value=_DATETIME_MAX_MS))
def test_when_agrees_with_datetime_where_datetime_works(ms: int) -> None:
    d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert when(ms) == f"{d.year:04d}-{d:%m-%d %H:%M:%S} UTC"


def test_when_edges() -> None:
    assert when(0) == "1970-01-01 00:00:00 UTC"
    assert when(MAX_TIMESTAMP_MS) == "287396-10-12 08:59:00 UTC"
    assert when(-1) == "1969-12-31 23:59:59 UTC"
    assert when(float("inf")) == "?" and when(float("nan")) == "?"


def _is_mark(char: str) -> bool:
    code = ord(char)
    return (
        0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF or unicodedata.category(char) in ("Mn", "Me")
    )


def _check_safe(out: str, *, keep: str) -> None:
    run = MAX_MARK_RUN
    for char in out:
        category = unicodedata.category(char)
        if char in keep:
            run = MAX_MARK_RUN
            continue
        assert category not in HIDDEN, f"{char!r} ({category}) reached the terminal raw"
        assert char not in "\u2028\u2029\x85"
        if _is_mark(char):
            run += 1
            assert run <= MAX_MARK_RUN, f"a run of marks longer than {MAX_MARK_RUN} reached the terminal"
        else:
            run = 0


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200))
def test_shown_escapes_every_invisible_and_format_character(text: str) -> None:
    _check_safe(shown(text), keep="\t\n")
    _check_safe(shown_line(text), keep="")


def test_the_reported_invisible_characters_are_escaped() -> None:
    cases = {
        "\u200b": "\\u200b",  # zero-width space
        "\u200d": "\\u200d",  # zero-width joiner
        "\U000e0041": "\\U000e0041",  # tag character
        "\ufff9": "\\ufff9",  # interlinear annotation anchor
        "\u202e": "\\u202e",  # right-to-left override
        "\x1b": "\\u001b",
        "\ue000": "\\ue000",  # private use
    }
    for char, escaped in cases.items():
        assert shown(f"a{char}b") == f"a{escaped}b"
    zalgo = "e" + "\u0301" * 40
    out = shown(zalgo)
    assert out.startswith("e" + "\u0301" * MAX_MARK_RUN) and out.count("\\u0301") == 40 - MAX_MARK_RUN
    assert shown("e\u0301") == "e\u0301" and shown("\u2764\ufe0f") == "\u2764\ufe0f"  # real text stays


def _ok(home: Path, *args: str) -> str:
    result = p2pblog(home, *args)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def test_far_future_entries_already_stored_display_everywhere(tmp_path: Path) -> None:
    """Entries stamped up to 2**53 - 1 ms, stored before the ingest bound existed (so
    ingested with no clock), show in timeline, log, thread and mentions."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice_handle = _ok(alice, "init").splitlines()[-1]
    bob_handle = _ok(bob, "init").splitlines()[-1]
    _ok(bob, "follow", alice_handle)
    author = read_key_file(alice / "identity.key")
    with Store(bob / "store.sqlite3") as store:
        first = create_entry(
            author,
            seq=1,
            prev=None,
            timestamp=MAX_TIMESTAMP_MS,
            kind=POST,
            body=post_body(f"hello from the far future {bob_handle}"),
        )
        reply = create_entry(
            author,
            seq=2,
            prev=first.id,
            timestamp=MAX_TIMESTAMP_MS - 1,
            kind=POST,
            body=post_body("and again \u200b\U000e0041", first.id),
        )
        store.ingest(first.raw)
        store.ingest(reply.raw)
    year = "287396-10-12"
    assert year in _ok(bob, "timeline")
    assert year in _ok(bob, "timeline", "--json")
    assert year in _ok(bob, "log", alice_handle)
    thread = _ok(bob, "thread", first.id.hex())
    assert year in thread and "\\u200b\\U000e0041" in thread and "\u200b" not in thread
    assert year in _ok(bob, "thread", reply.id.hex(), "--json")
    assert year in _ok(bob, "mentions")
