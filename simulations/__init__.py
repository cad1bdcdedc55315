"""Deterministic discrete-event simulation of p2pblog networks with partial failure.

`simulations.engine` (virtual time), `simulations.network` (links and
faults), `simulations.node` (the real NodeCore on the simulated network),
`simulations.adversary` (malicious roles), `simulations.scenario` (TOML
scenarios) and `simulations.simulation` (the run: workload, faults, oracles,
metrics).  See docs/simulations.md.
"""
