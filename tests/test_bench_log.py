"""bench_log.py and bench_gossip.py's arithmetic cannot flatter (issue 18); not timed.

Rounds interleave the sides, ratios are per round and summarised by their
median, and the verify cache cannot serve a measured verify.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_log  # noqa: E402
from bench_context import ratio_summary, rotated  # noqa: E402
from bench_gossip import round_ratios  # noqa: E402

import identity.keys  # noqa: E402
from identity import Identity, verify  # noqa: E402


def test_the_cold_cache_counts_what_it_serves_and_puts_the_process_cache_back() -> None:
    signer = Identity(b"\x07" * 32)
    signed = signer.sign(b"hello")
    own = identity.keys._verified
    with bench_log.cold_verify_cache() as cache:
        assert identity.keys._verified is not own
        verify(signer.public_key, signed)
        assert cache.hits == 0
        verify(signer.public_key, signed)
        assert cache.hits == 1
    assert identity.keys._verified is own


def test_rounds_rotate_and_the_median_is_not_the_best() -> None:
    assert [rotated(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    summary = ratio_summary([0.4, 0.486, 1.2], target=0.9)
    assert summary["median"] == 0.486
    assert summary["max"] == 1.2
    assert summary["met"] is False
    assert ratio_summary([0.8, 1.0], target=0.9)["median"] == pytest.approx(0.9)


def test_a_ratio_is_of_rates_over_the_same_entries() -> None:
    ours = {"entries": 100, "wall": 2.0, "cpu": 4.0, "thread_cpu": 1.0}
    base = {"entries": 100, "wall": 1.0, "cpu": 1.0}
    ratios = bench_log.speed_ratios(ours, base)
    assert ratios == {"wall": 0.5, "cpu": 0.25, "thread_cpu": 1.0}
    # Different counts: entries per second, not seconds, are compared.
    assert bench_log.speed_ratios({**ours, "entries": 200}, base)["wall"] == 1.0


def test_gossip_round_ratios_use_the_followers_cpu_and_count_a_failed_run_as_zero() -> None:
    row = {
        "p2pblog": {"finished": True, "rate": 9000.0, "cpu_seconds_b": 10.0},
        "raw_verify": {"rate": 10000.0, "cpu_seconds": 9.0},
        "hypercore": {"finished": True, "rate": 6000.0, "cpu_seconds_fetch": 15.0},
    }
    ratios = round_ratios(row)
    assert ratios["over_raw_verify"] == {"wall": pytest.approx(0.9), "cpu": pytest.approx(0.9)}
    assert ratios["over_hypercore"] == {"wall": pytest.approx(1.5), "cpu": pytest.approx(1.5)}
    row["p2pblog"] = {"finished": False, "rate": 0.0, "cpu_seconds_b": 30.0}
    ratios = round_ratios(row)
    assert ratios["over_raw_verify"]["wall"] == 0.0
    assert math.isnan(ratios["over_raw_verify"]["cpu"])


def test_a_tiny_run_reports_rounds_medians_machine_and_no_cache_hits(tmp_path: Path) -> None:
    out = tmp_path / "bench_log.json"
    argv = ["--entries", "60", "--append", "30", "--import-entries", "20", "--rounds", "2"]
    assert bench_log.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["order"][0] for row in result["rounds"]] == ["raw_sign+append", "ingest"]
    assert all(row["ingest"]["verify_cache_hits"] == 0 for row in result["rounds"])
    for key in ("append_over_raw_sign", "ingest_over_raw_verify", "import_over_raw_verify"):
        wall = result["ratios"][key]["wall"]
        assert len(wall["per_round"]) == 2
        assert wall["median"] == pytest.approx(sum(wall["per_round"]) / 2)
        assert "median" in result["ratios"][key]["cpu"]
    assert result["machine"]["cpu"] and result["machine"]["cores"]
    assert len(result["load_average_before"]) == len(result["load_average_after"]) == 3
    assert "--rounds 2" in result["command"]


def test_raw_sign_and_append_run_in_alternating_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load that changes within a round must reach both sides: blocks of raw signs and append
    transactions alternate, and so does which of a pair goes first."""
    events: list[str] = []
    real_key = bench_log.nacl.signing.SigningKey

    class RecordingKey:
        def __init__(self, seed: bytes) -> None:
            self._key = real_key(seed)

        def sign(self, message: bytes) -> object:
            events.append("s")
            return self._key.sign(message)

    real_body = bench_log.post_body

    def recording_body(text: str) -> dict[str, object]:
        events.append("a")
        return real_body(text)

    monkeypatch.setattr(bench_log.nacl.signing, "SigningKey", RecordingKey)
    monkeypatch.setattr(bench_log, "post_body", recording_body)
    monkeypatch.setattr(bench_log, "APPEND_BATCH", 3)
    inputs = bench_log.round_inputs(0, argparse.Namespace(entries=8, append=8), [])
    events.clear()  # (building the inputs made bodies too)
    sign, append = bench_log.measure_sign_and_append(inputs, argparse.Namespace(), tmp_path, 1)
    assert "".join(events) == "aaasss" + "sssaaa" + "aass"
    assert sign["entries"] == append["entries"] == 8
    assert sign["wall"] > 0 and append["wall"] > 0 and append["cpu"] > 0


def test_with_held_the_measured_stores_already_hold_another_feed(tmp_path: Path) -> None:
    held = bench_log.held_feed(5)
    inputs = bench_log.round_inputs(0, argparse.Namespace(entries=8, append=4), held)
    store = bench_log.fresh_store(tmp_path / "store.db", inputs)
    try:
        assert store.latest_seq(bench_log.round_identity("held", 0).public_key) == 5
        assert store.latest_seq(inputs.author.public_key) == 0
    finally:
        store.close()
    out = tmp_path / "held.json"
    argv = ["--entries", "40", "--append", "20", "--import-entries", "0", "--rounds", "1", "--held", "30"]
    assert bench_log.main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["parameters"]["held"] == 30


def test_the_gossip_benchmark_reads_the_nodes_timestamped_log_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bench_gossip waits for "joined the DHT" in the node's log, whose lines carry a time
    and a level before the message (p2pblog.daemon.log); a bare message still matches."""
    from bench_gossip import log_message

    from p2pblog.daemon import log

    log("joined the DHT: 1 of 1 seeds answered, 1 contacts")
    line = capsys.readouterr().err.strip()
    assert not line.startswith("joined")
    assert log_message(line) == "joined the DHT: 1 of 1 seeds answered, 1 contacts"
    assert log_message("joined the DHT") == "joined the DHT"
