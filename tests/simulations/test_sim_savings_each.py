"""Each simulator-only saving alone leaves metrics.json byte-identical (`simulations.savings`).

The companion of `tests.simulations.test_sim_savings` (all the savings together, and the null
cipher's own tests), in a file of its own so the test workers share the runs.
"""

from __future__ import annotations

import pytest

from tests.simulations.test_sim_savings import ONLY, Watch, reference, run


@pytest.mark.parametrize(
    ("saving", "name"),
    [("null_cipher", "baseline"), ("snapshots_in_memory", "crash-and-loss"), ("gc_tuned", "baseline")],
)
def test_each_saving_alone_leaves_metrics_json_byte_identical(
    saving: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reference(name)
    watch = Watch(monkeypatch)
    text, _ = run(name, ONLY[saving], watch)
    assert text == expected
    if saving == "null_cipher":
        assert watch.encrypted["NullCipher"] > 1_000
    else:
        assert watch.encrypted["NullCipher"] == 0
    if saving == "snapshots_in_memory":
        # Crashed nodes' snapshots were written at the crash: the restarts read them.
        assert 0 < watch.contact_writes < watch.contact_saves / 3
    else:
        assert watch.contact_saves == 0 and watch.contact_writes > 0
    assert {frozen for _, frozen in watch.gc_seen} == {saving == "gc_tuned"}
