"""Warm starts (`search.warm_start`): seed a search with what earlier runs in the registry measured.

An earlier search candidate is reused only when its numbers mean the same thing here:
- its run searched the same space (name and options) on the same dataset (cache folder aside);
- its accuracy is a proxy trained the same way (search.proxy and train.config equal);
- every device of this spec has a latency for it from a device with the same fingerprint, on the
  same scale (measured, LUT or predicted, as this search uses).
Reused candidates are copied into this run (their rows say `extra.reused_from`, the run and
candidate they came from), scored with this spec's objectives, and handed to the strategy's
`warm_start` before its first `ask`; they do not count against `search.budget`. Candidates of
the same space whose numbers do not carry over (other proxy settings, another device
fingerprint) fill the rest of `top`: they are evaluated again first, counted against the budget
(`extra.seeded_from` names their run), and handed to `warm_start` as well. Only runs started
before this one are read, and the choice is made again, identically, when the run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError
from ..lut import device_fingerprint_hash
from ..objectives import score, spread_along_front
from ..plugin_api import DeviceBackend, SearchSpace
from ..registry import Registry
from ..spec import Spec, parse_spec
from .records import candidate_id, stable_id
from .told import candidate_result, latencies

STAGE = "search"


@dataclass
class WarmStart:
    rows: list[dict[str, Any]] = field(default_factory=list)  # candidate rows copied into this run
    measurements: list[dict[str, Any]] = field(default_factory=list)
    # Earlier architectures of this space whose numbers do not carry over (another proxy setting,
    # another device fingerprint): evaluated again first, within the budget. (genome, run id).
    seeds: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # why earlier candidates were not reused -> how many

    def message(self) -> str | None:
        """A warning when nothing could be reused, saying why."""
        if self.rows or self.seeds:
            return None
        if not self.skipped:
            return "search.warm_start: no earlier search in this registry to start from; the search starts cold"
        reasons = "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"search.warm_start: no earlier candidate could be reused ({reasons}); the search starts cold"


def _same(a: Any, b: Any) -> bool:
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def _run_mismatch(spec: Spec, earlier: Spec) -> str | None:
    if earlier.space.name != spec.space.name or earlier.space.options != spec.space.options:
        return "were searched in another space"
    ours, theirs = spec.dataset.model_dump(mode="json"), earlier.dataset.model_dump(mode="json")
    ours.pop("cache_dir", None), theirs.pop("cache_dir", None)
    if ours != theirs:
        return "were trained on another dataset or split"
    if not (_same(spec.search.proxy, earlier.search.proxy) and _same(spec.train.config, earlier.train.config)):
        return "had their proxy accuracy from other proxy or training settings"
    return None


def earlier_runs(registry: Registry, run_id: str, wanted: list[str]) -> list[dict[str, Any]]:
    """Runs started before `run_id` (all of them, or those listed), oldest first."""
    me = registry.get_run(run_id)
    started = me["started_at"] if me else None
    _, rows = registry.query(
        "SELECT run_id, spec_yaml, started_at FROM runs WHERE run_id <> ? AND (? IS NULL OR started_at < ?) ORDER BY started_at",
        [run_id, started, started],
    )
    runs = [{"run_id": r, "spec_yaml": y} for r, y, _ in rows]
    if wanted:
        missing = sorted(set(wanted) - {r["run_id"] for r in runs})
        if missing:
            raise SpecError(f"search.warm_start.runs: no earlier run {', '.join(map(repr, missing))} in {registry.path}")
        runs = [r for r in runs if r["run_id"] in wanted]
    return runs


def collect(
    registry: Registry, spec: Spec, run_id: str, space: SearchSpace, devices: dict[str, DeviceBackend]
) -> WarmStart:
    """The earlier candidates this search can reuse, copied as this run's rows (not yet written)."""
    cfg = spec.search.warm_start
    found = WarmStart()
    fingerprints = {name: device_fingerprint_hash(device) for name, device in devices.items()}
    source = spec.search.latency
    pool: dict[str, tuple[dict, list[dict]]] = {}  # arch hash -> (earlier row, its measurements)
    again: dict[str, dict] = {}  # arch hash -> earlier row of this space whose numbers do not carry over

    def skip(why: str, n: int = 1) -> None:
        found.skipped[why] = found.skipped.get(why, 0) + n

    for run in earlier_runs(registry, run_id, cfg.runs):
        candidates = [r for r in registry.get_candidates(run["run_id"], stage=STAGE) if r["status"] == "ok"]
        if not candidates:
            continue
        try:
            earlier = parse_spec(run["spec_yaml"], f"run {run['run_id']}")
        except Exception:  # noqa: BLE001 (a spec this version no longer reads cannot be compared)
            skip("came from runs whose spec this nasflow version cannot read", len(candidates))
            continue
        mismatch = _run_mismatch(spec, earlier)
        if mismatch == "were searched in another space":
            skip(mismatch, len(candidates))
            continue
        if mismatch:  # the same space, numbers from other settings: worth evaluating again
            for row in candidates:
                again.setdefault(row["arch_hash"], row)
            continue
        by_candidate: dict[str, list[dict]] = {}
        for m in registry.get_measurements([c["candidate_id"] for c in candidates]):
            by_candidate.setdefault(m["candidate_id"], []).append(m)
        for row in candidates:
            if row.get("accuracy_source") != "proxy" or row.get("accuracy") is None:
                skip("had no proxy accuracy")
                continue
            usable = [
                m for m in by_candidate.get(row["candidate_id"], [])
                if m["device"] in fingerprints and m["fingerprint_hash"] == fingerprints[m["device"]]
                and m["source"] == source and m["metric"] in ("latency", "energy") and m.get("artifact_id") is None
            ]
            if set(latencies(usable, source)) != set(fingerprints):
                again.setdefault(row["arch_hash"], row)  # e.g. timed on another machine: time it here
                continue
            pool.setdefault(row["arch_hash"], (row, usable))  # the oldest run's copy of an architecture wins
    _choose(found, pool, spec, space, run_id, cfg.top)
    _seeds(found, again, space, cfg.top)
    return found


def _seeds(found: WarmStart, again: dict[str, dict], space: SearchSpace, top: int) -> None:
    """Fill the warm start up to `top` with architectures to evaluate again: the best by the score
    their own run gave them (a ranking, not a number carried over)."""
    taken = {r["arch_hash"] for r in found.rows}
    ranked = sorted(
        (r for h, r in again.items() if h not in taken and r.get("score") is not None),
        key=lambda r: (-r["score"], r["arch_hash"]),
    )
    for row in ranked[: max(0, top - len(found.rows))]:
        try:
            found.seeds.append((space.from_arch(row["arch"]), row["run_id"]))
        except Exception:  # noqa: BLE001 (an architecture this space no longer expresses)
            found.skipped["are not architectures of this space"] = found.skipped.get("are not architectures of this space", 0) + 1


def _choose(found: WarmStart, pool: dict, spec: Spec, space: SearchSpace, run_id: str, top: int) -> None:
    """The `top` best earlier candidates by this spec's objectives (spread along the Pareto front
    when it sets objectives.pareto), copied as rows of this run."""
    copies = []
    for h, (row, measurements) in sorted(pool.items()):
        cand = candidate_id(run_id, STAGE, h)
        latency = latencies(measurements, spec.search.latency)
        objective = latency.get(spec.objective_device)
        try:
            genome = space.from_arch(row["arch"])
            value = score(row["accuracy"], objective.ms if objective else None, spec.objectives)
        except Exception:  # noqa: BLE001 (an architecture this space no longer expresses)
            found.skipped["are not architectures of this space"] = found.skipped.get("are not architectures of this space", 0) + 1
            continue
        extra = {**(row.get("extra") or {}), "genome": list(genome), "reused_from": row["run_id"], "reused_candidate": row["candidate_id"]}
        copy = {**row, "candidate_id": cand, "run_id": run_id, "score": value, "extra": extra}
        copy.pop("created_at", None)
        mrows = []
        for m in measurements:
            mrow = {**m, "candidate_id": cand, "run_id": run_id, "extra": {**(m.get("extra") or {}), "reused_from": m["run_id"]}}
            mrow["measurement_id"] = stable_id("measurement", cand, m["device"], m["artifact_format"], m["source"], None, m["metric"])
            mrow.pop("created_at", None)
            mrows.append(mrow)
        copies.append((copy, mrows))
    if spec.objectives.pareto:
        results = [candidate_result((), c, m, spec.search.latency, spec.pareto) for c, m in copies]
        usable = [i for i, r in enumerate(results) if r.costs is not None]
        picks = [usable[i] for i in spread_along_front([results[i].costs for i in usable], top)]
    else:
        picks = sorted(range(len(copies)), key=lambda i: (-copies[i][0]["score"], copies[i][0]["arch_hash"]))[:top]
    for i in picks:
        found.rows.append(copies[i][0])
        found.measurements += copies[i][1]
