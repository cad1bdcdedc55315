"""``p2pblog sim``: the deterministic network simulator on the command line.

``sim list`` names the bundled scenarios, ``sim run`` runs one scenario with
one seed, ``sim sweep`` runs it over many seeds on a Dask cluster
(`simulations.sweep`: the one at ``--cluster``, or a local one of ``--jobs``
processes).  The simulator itself lives in `simulations`
(docs/simulations.md); this module only reads the options, shows progress,
writes the reports through `simulations.report` and turns the outcome into an
exit status.

`simulations` is imported inside the commands, not at the top: it pulls in
the whole node core (and the report's plotting), which ``p2pblog --help``
and every other command do not need.  This is the one place outside
`simulations` that imports it (tests/test_layers.py lists the exception).

Streams follow cli/main.py: the summary goes to stdout, progress to stderr.
A scenario the user got wrong (unknown name, bad TOML, a field out of range)
is one ``Error: ...`` line and exit status 1; so is a violated oracle, after
the reports are written, naming the seed to reproduce it with.  An exception
from inside the simulation is a bug, not a user error: it stays a traceback
(`SimulationCrashed`, naming the seed), even when it is one of the errors
cli/main.py would print as one line.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

if TYPE_CHECKING:
    from simulations.scenario import Scenario
    from simulations.simulation import Result
    from simulations.sweep import SeedOutcome

#: Where outputs go when --out is not given (relative to the working directory).
DEFAULT_OUT = Path("sim-out")
#: More seeds than this in one sweep is almost certainly a typo (1..100000).
MAX_SEEDS = 10_000
#: A redrawn progress line at most this often (seconds of wall time) on a terminal ...
TTY_INTERVAL = 0.2
#: ... and a new plain line at most this often when stderr is a file or a pipe.
PLAIN_INTERVAL = 5.0


# --- scenarios -------------------------------------------------------------------


@contextmanager
def _scenario_errors() -> Iterator[None]:
    """A `ScenarioError` (a ValueError naming the field) becomes one ``Error:`` line."""
    from simulations.scenario import ScenarioError

    try:
        yield
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None


def _need_sim_extra(*modules: str) -> None:
    """One ``Error:`` line naming the extra when the simulator's optional packages are missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"p2pblog sim needs {' and '.join(missing)}: pip install 'p2pblog[sim]'")


def _load(
    name_or_path: str, *, seed: int | None, nodes: int | None, duration: float | None, dht: str | None = None
) -> Scenario:
    from simulations.scenario import Scenario

    with _scenario_errors():
        return Scenario.load(name_or_path).with_overrides(seed=seed, nodes=nodes, duration=duration, dht=dht)


def _note_unchecked_convergence(scenario: Scenario) -> None:
    """Say so when the convergence oracle cannot fire (its deadline is after the end)."""
    if scenario.converge_by > scenario.duration:
        click.echo(
            f"note: the convergence deadline ({scenario.converge_by:g} s) is after the end of the run "
            f"({scenario.duration:g} s): the convergence oracle does not run",
            err=True,
        )


def _slug(name: str) -> str:
    """A scenario name made safe as one path component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "scenario"


def parse_seeds(spec: str) -> list[int]:
    """``1..20``, ``3`` or ``1,5,9`` (items may be mixed: ``1..4,10``) -> sorted distinct seeds."""
    seeds: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        first, sep, last = item.partition("..")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise click.ClickException(
                f"--seeds: {item!r} is not a seed; use a range 1..20, one seed 3, or a list 1,5,9"
            ) from None
        if low < 0 or high < 0:
            raise click.ClickException(f"--seeds: {item!r}: seeds are integers >= 0")
        if high < low:
            raise click.ClickException(f"--seeds: {item!r}: the range is empty (write LOW..HIGH)")
        if high - low + 1 + len(seeds) > MAX_SEEDS:
            raise click.ClickException(f"--seeds: at most {MAX_SEEDS} seeds in one sweep")
        seeds.update(range(low, high + 1))
    return sorted(seeds)


# --- progress --------------------------------------------------------------------


class Progress:
    """The ``progress`` callback of `run_scenario`: simulated time, percent, events/s.

    On a terminal it redraws one line (carriage return) at most every
    `TTY_INTERVAL`; otherwise it writes a plain line at most every
    `PLAIN_INTERVAL`.  `finish` always writes the final line.  A scenario that
    runs twice (the flood comparison) restarts simulated time and the event
    count; both are summed, so events/s stays right.
    """

    def __init__(self, duration: float, stream: IO[str]) -> None:
        self.duration = duration
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._shown = self.started
        self._last_events = 0
        self._earlier_events = 0
        self._sim_time = 0.0
        self._width = 0

    @property
    def events(self) -> int:
        return self._earlier_events + self._last_events

    def __call__(self, sim_time: float, events_run: int) -> None:
        if events_run < self._last_events:  # a second run of the same scenario began
            self._earlier_events += self._last_events
        self._last_events = events_run
        self._sim_time = sim_time
        now = time.monotonic()
        if now - self._shown < (TTY_INTERVAL if self.tty else PLAIN_INTERVAL):
            return
        self._shown = now
        self._write(self._line(now))

    def finish(self) -> None:
        self._write(self._line(time.monotonic()), final=True)

    def _line(self, now: float) -> str:
        wall = max(now - self.started, 1e-9)
        fraction = min(1.0, self._sim_time / self.duration) if self.duration else 1.0
        bar = "#" * round(20 * fraction)
        return (
            f"sim {self._sim_time:,.1f}/{self.duration:,.1f} s  [{bar:<20}] {fraction:4.0%}"
            f"  {self.events / wall:,.0f} events/s  ({wall:.1f} s wall)"
        )

    def _write(self, line: str, *, final: bool = False) -> None:
        if self.tty:
            pad = " " * max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# --- commands --------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sim() -> None:
    """Simulate a p2pblog network: many nodes, faults and attackers, in virtual time.

    The real node cores (DHT, gossip, store) run on a deterministic
    discrete-event network: the same scenario and seed give the same run,
    byte for byte.  Oracles check every run for invalid entries, diverging
    replicas and feeds that fail to converge.  See docs/simulations.md.
    """


@sim.command("list")
def list_() -> None:
    """List the bundled scenarios, one line each: name and description."""
    from simulations.scenario import Scenario, bundled_names

    names = bundled_names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        with _scenario_errors():
            scenario = Scenario.load(name)
        click.echo(f"{name:<{width}}  {scenario.description}".rstrip())


_scenario_argument = click.argument("scenario", metavar="SCENARIO")


def _use_compiled(ctx: click.Context, param: click.Parameter, wanted: bool) -> bool:
    """``--compiled``: import the mypyc build of the hot modules (`simulations.compiled`) from now on."""
    if wanted:
        from simulations.compiled import BuildError, activate

        try:
            click.echo(f"compiled build: {activate()}", err=True)
        except BuildError as exc:
            raise click.ClickException(str(exc)) from None
    return wanted


_compiled_option = click.option(
    "--compiled",
    is_flag=True,
    envvar="P2PBLOG_COMPILED",
    expose_value=False,
    callback=_use_compiled,
    help="Run the compiled build of the hot modules (made by `python -m simulations.compiled build`; "
    "same results, faster). Also P2PBLOG_COMPILED=1.",
)
_nodes_option = click.option(
    "--nodes", type=int, metavar="N", help="Override the scenario's number of nodes (2..100000)."
)
_duration_option = click.option(
    "--duration", type=float, metavar="SECONDS", help="Override the scenario's simulated duration."
)
_dht_option = click.option(
    "--dht",
    type=click.Choice(["full", "model"]),
    default=None,
    help="DHT fidelity: full (the real DHT over simulated datagrams) or model (a model calibrated "
    "against full runs, answering from a global view; not for adversarial-DHT scenarios).  "
    "Default: the scenario's `dht`, else full below 500 nodes and model from 500 up.",
)


@sim.command()
@_scenario_argument
@click.option("--seed", type=int, metavar="N", help="The random seed (default: the scenario's `seed`).")
@_nodes_option
@_duration_option
@_dht_option
@_compiled_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where to write metrics.json, report.md and the plots (default: ./sim-out/<scenario>-seed<N>).",
)
@click.option(
    "--shards",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="Worker processes for this one run (1: a single process; N > 1 shards the nodes and gives "
    "the same results for the same seed and N, not the single process's).",
)
def run(
    scenario: str,
    seed: int | None,
    nodes: int | None,
    duration: float | None,
    dht: str | None,
    out: Path | None,
    shards: int,
) -> None:
    """Run SCENARIO once and write its metrics, report and plots.

    SCENARIO is a bundled name (see `p2pblog sim list`) or the path of a
    TOML file.  Progress (simulated time, events/s) goes to stderr; a short
    summary and the seed go to stdout.  Exits 1 if an oracle was violated,
    naming the seed and the first violation.
    """
    _need_sim_extra("matplotlib")
    loaded = _load(scenario, seed=seed, nodes=nodes, duration=duration, dht=dht)
    if shards > 1:
        loaded = _sharded(loaded, shards)
    from simulations.report import summary, write_run

    out_dir = out if out is not None else DEFAULT_OUT / f"{_slug(loaded.name)}-seed{loaded.seed}"
    _writable(out_dir)
    _note_unchecked_convergence(loaded)
    progress = Progress(loaded.duration, sys.stderr)
    try:
        result = _simulate(loaded, progress, shards=shards)
    finally:
        progress.finish()  # ends the progress line, also before a traceback or "Aborted!"
    written = write_run(result, out_dir)
    for line in summary(result):
        click.echo(line)
    click.echo(f"wrote {len(written)} files to {out_dir}")
    if not result.ok:
        first = result.violations[0]
        raise click.ClickException(
            f"seed {loaded.seed}: {len(result.violations)} oracle violation(s); first: {first.oracle} "
            f"at {first.time:g} s: {first.detail}"
        )


def _writable(out_dir: Path) -> None:
    """Make the output directory now, so a bad --out fails before a long run, not after it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".p2pblog-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out_dir}: {exc.strerror or exc}") from None


class SimulationCrashed(RuntimeError):
    """The simulator or a core raised: a bug to fix, never the user's mistake.

    Deliberately not a `click.ClickException` (nor one of the errors cli/main.py's
    `_Group` turns into one line): the traceback, with the seed that replays it,
    is what the bug report needs.
    """


def _sharded(scenario: Scenario, shards: int) -> Scenario:
    """The scenario with the latency floor a sharded run needs, or one ``Error:`` line."""
    from simulations.shards import ShardError, prepare

    try:
        sharded, lookahead = prepare(scenario, shards)
    except ShardError as exc:
        raise click.ClickException(str(exc)) from None
    if sharded.network.latency != scenario.network.latency:
        click.echo(
            f"note: --shards {shards}: latency draws get a floor of {lookahead * 1000:g} ms "
            "(network.latency.min_ms), the lookahead of the shards' windows",
            err=True,
        )
    return sharded


def _simulate(scenario: Scenario, progress: Progress | None = None, *, shards: int = 1) -> Result:
    from simulations.shards import run_sharded
    from simulations.simulation import run_scenario

    try:
        if shards > 1:
            return run_sharded(scenario, shards, progress=progress)
        return run_scenario(scenario, progress=progress)
    except Exception as exc:
        raise SimulationCrashed(
            f"the simulation of {scenario.name} crashed (seed {scenario.seed}, {scenario.nodes} nodes, "
            f"{scenario.duration:g} s): {type(exc).__name__}: {exc}"
        ) from exc


@sim.command()
@_scenario_argument
@click.option(
    "--seeds",
    "seeds_spec",
    required=True,
    metavar="SEEDS",
    help="The seeds: a range 1..20 (both ends included), one seed 3, "
    "or a comma-separated list 1,5,9 (items may be ranges: 1..4,10).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of the local cluster (default: the number of CPUs; not used with --cluster).",
)
@click.option(
    "--cluster",
    metavar="ADDRESS",
    default=None,
    help="Run the seeds on the Dask cluster whose scheduler is at ADDRESS (tcp://HOST:8786); "
    "default: a local cluster of --jobs worker processes.",
)
@_nodes_option
@_duration_option
@_dht_option
@_compiled_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where to write sweep.json, sweep.md and one seed-N/ directory per seed "
    "(default: ./sim-out/<scenario>-sweep).",
)
def sweep(
    scenario: str,
    seeds_spec: str,
    jobs: int | None,
    cluster: str | None,
    nodes: int | None,
    duration: float | None,
    dht: str | None,
    out: Path | None,
) -> None:
    """Run SCENARIO over many seeds in parallel and aggregate the metrics.

    The seeds run on a Dask cluster: the one at --cluster ADDRESS (its
    workers started with `dask worker ADDRESS` from a checkout of the same
    version), or a local one of --jobs processes.  The results are the same
    wherever a seed runs.  Writes each seed's outputs (as `sim run` does) to
    DIR/seed-N/, and DIR/sweep.json, DIR/sweep.md and the figures of the
    spread across seeds.  One line per finished seed goes to stderr.  Exits 1
    if any seed violated an oracle, listing those seeds.
    """
    _need_sim_extra("matplotlib", "distributed")
    seeds = parse_seeds(seeds_spec)
    loaded = _load(scenario, seed=None, nodes=nodes, duration=duration, dht=dht)
    from simulations.report import write_sweep

    out_dir = out if out is not None else DEFAULT_OUT / f"{_slug(loaded.name)}-sweep"
    _writable(out_dir)
    workers = min(jobs or os.cpu_count() or 1, len(seeds))
    _note_unchecked_convergence(loaded)
    started = time.monotonic()
    outcomes = sorted(_sweep_outcomes(loaded, seeds, out_dir, workers, cluster), key=lambda o: o.seed)
    wall = time.monotonic() - started
    results = [o.result for o in outcomes if o.result is not None]
    crashed = [o for o in outcomes if o.crash is not None]
    written = write_sweep(results, out_dir) if results else []
    failed = [r for r in results if not r.ok]
    click.echo(
        f"scenario {loaded.name}  seeds {seeds_spec}  {len(results) - len(failed)}/{len(outcomes)} ok  "
        f"{wall:.1f} s wall"
    )
    click.echo(f"wrote {len(written)} files to {out_dir} (and seed-N/ per seed)")
    problems = []
    if crashed:
        click.echo(f"the first crash (seed {crashed[0].seed}):\n{crashed[0].crash}", err=True)
        problems.append(f"the simulation crashed in seed(s) {', '.join(str(o.seed) for o in crashed)}")
    if failed:
        first = failed[0].violations[0]
        names = ", ".join(str(r.scenario.seed) for r in failed)
        problems.append(
            f"oracle violated in seed(s) {names}; first: seed {failed[0].scenario.seed}: "
            f"{first.oracle} at {first.time:g} s: {first.detail}"
        )
    if problems:
        raise click.ClickException("; ".join(problems))


def _sweep_outcomes(
    scenario: Scenario, seeds: list[int], out_dir: Path, workers: int, cluster: str | None
) -> list[SeedOutcome]:
    """Run the seeds (in this process for one job and no cluster, else on a Dask cluster)."""
    from simulations.sweep import ClusterUnavailable, dask_client, run_seed, run_seeds, worker_count

    outcomes: list[SeedOutcome] = []

    def report(outcome: SeedOutcome) -> None:
        outcome.write(out_dir / f"seed-{outcome.seed}")
        outcomes.append(outcome)
        result = outcome.result
        if result is None:
            status = "CRASHED"
        elif result.ok:
            status = "ok"
        else:
            v = result.violations[0]
            status = f"VIOLATION {v.oracle} at {v.time:g} s: {v.detail}"
        click.echo(
            f"[{len(outcomes)}/{len(seeds)}] seed {outcome.seed}  {status}  ({outcome.wall:.1f} s)",
            err=True,
        )

    def announce(count: int, where: str) -> None:
        click.echo(
            f"sweeping {scenario.name} over {len(seeds)} seed(s) with {count} worker(s){where}", err=True
        )

    if workers == 1 and cluster is None:  # no cluster: one process, and Ctrl-C stops at once
        announce(1, "")
        for seed in seeds:
            report(run_seed(scenario, seed))
        return outcomes
    try:
        with dask_client(cluster, workers) as client:
            announce(worker_count(client), f" on the Dask cluster at {cluster}" if cluster else "")
            for outcome in run_seeds(client, scenario, seeds):
                report(outcome)
    except ClusterUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    return outcomes


#: What `cli.main` adds to the command line when `p2pblog sim` is asked for.
COMMANDS = (sim,)


@sim.command()
@click.option(
    "--run",
    "runs",
    multiple=True,
    metavar="SCENARIO:NODES:SECONDS",
    help="A full-fidelity run to measure (repeatable; default: baseline:200:600 and baseline:400:600).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="The seed of every run.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Where to write the calibration (default: simulations/calibration.json, which `--dht model` reads).",
)
def calibrate(runs: tuple[str, ...], seed: int, out: Path | None) -> None:
    """Calibrate the DHT model against full runs (as `python -m simulations.calibrate`).

    Runs each scenario with the full DHT and writes the walk-time, hops and
    providers-returned quantiles and the DHT bytes per query that `--dht model`
    draws from.
    """
    from simulations import calibrate as calibration
    from simulations.dhtmodel import CALIBRATION_FILE

    try:
        specs = [calibration.parse_run(spec) for spec in runs] if runs else list(calibration.DEFAULT_RUNS)
    except ValueError:
        raise click.BadParameter(
            "SCENARIO:NODES:SECONDS, e.g. baseline:200:600", param_hint="--run"
        ) from None
    target = out if out is not None else CALIBRATION_FILE
    with _scenario_errors():
        result = calibration.calibrate(specs, seed)
    calibration.write(result, target)
    click.echo(f"wrote {target}")
