"""What a report shows of one run, read from the registry (nothing is trained, timed or converted).

Every number keeps the field that says where it came from: `accuracy_source` for accuracies,
the measurement's `source` (measured / lut / predicted / estimated) for latencies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import NasflowError
from ..objectives import pareto_front

FINAL_STAGES = ("morph", "train", "search")  # the chosen model comes from the last stage that produced one


@dataclass
class LayerCost:
    position: int
    kind: str
    token: str
    macs: int
    lut_ms: float | None  # None: executes nothing, or not in the LUT (`in_lut`)
    in_lut: bool = True


@dataclass
class RunData:
    run_id: str
    run: dict[str, Any]
    spec: Any
    devices: list[str]
    objective_device: str
    candidates: list[dict[str, Any]]
    search_rows: list[dict[str, Any]]
    search_log: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    chosen_why: str
    layers: dict[str, list[LayerCost]] = field(default_factory=dict)  # device -> the chosen model's layers
    lut_notes: dict[str, str] = field(default_factory=dict)  # device -> why there is no breakdown
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return self.spec.search.strategy if self.spec.search.enabled else "-"

    def label(self) -> str:
        """How the run is named in legends: its spec name, strategy and space."""
        return f"{self.spec.name} ({self.strategy}, {self.spec.space.name})"

    def front(self, device: str) -> list[dict[str, Any]]:
        """The accuracy/latency Pareto front on `device`."""
        return pareto_front(self.points(device))

    def points(self, device: str) -> list[dict[str, Any]]:
        """Candidates with a latency on `device`, flattened for plotting."""
        points = []
        for row in self.candidates:
            m = row["latency"].get(device)
            if m is None or row.get("accuracy") is None:
                continue
            points.append({
                "run_id": self.run_id, "run": self.label(), "device": device, "stage": row["stage"],
                "candidate_id": row["candidate_id"], "arch": row["arch"],
                "accuracy": row["accuracy"], "accuracy_source": row.get("accuracy_source"),
                "test_accuracy": row.get("test_accuracy"), "latency_ms": m["median_ms"],
                "latency_source": m["source"], "runtime": m.get("runtime"), "params": row["params"],
                "macs": row["macs"], "score": row.get("score"),
            })
        return points


def unknown_run(registry, run_id: str, where: str = "the registry") -> NasflowError:
    """The error for a run id the registry does not hold, listing the runs it does."""
    _, rows = registry.query("SELECT run_id FROM runs ORDER BY started_at")
    known = ", ".join(r[0] for r in rows) or "none"
    return NasflowError(f"no run {run_id!r} in {where}; runs: {known}")


def load_run(registry, run_id: str, where: str = "the registry") -> RunData:
    """Everything the report draws for `run_id`; NasflowError (listing the runs) when it is unknown."""
    from ..flows.pipeline import candidate_table
    from ..spec import parse_spec

    run = registry.get_run(run_id)
    if run is None:
        raise unknown_run(registry, run_id, where)
    spec = parse_spec(run["spec_yaml"], f"<spec of {run_id}>", check_plugins=False)
    devices = [d.name for d in spec.devices]
    candidates = candidate_table(registry, run_id, spec.objective_device, devices)
    artifacts = artifacts_with_latency(registry, run_id)
    chosen, why = chosen_candidate(artifacts, candidates)
    data = RunData(
        run_id=run_id, run=run, spec=spec, devices=devices, objective_device=spec.objective_device,
        candidates=candidates, search_rows=registry.get_candidates(run_id, stage="search"),
        search_log=_dicts(registry, "SELECT step, metric, value FROM search_log WHERE run_id = ? ORDER BY step, metric",
                          [run_id]),
        chosen=chosen, chosen_why=why, artifacts=artifacts,
    )
    if chosen is not None:
        _add_layer_costs(registry, data)
    return data


def chosen_candidate(artifacts: list[dict], candidates: list[dict]) -> tuple[dict | None, str]:
    """The model the run hands over: the one its newest verified artifact (of `artifacts`, in
    recorded order) was exported from, else the best-scored candidate of the last stage that
    produced any (morph, then train, then search)."""
    by_id = {c["candidate_id"]: c for c in candidates}
    for artifact in reversed(artifacts):
        if artifact["verified"] and artifact["candidate_id"] in by_id:
            return by_id[artifact["candidate_id"]], f"deployed as {artifact['format']}"
    for stage in FINAL_STAGES:
        rows = [c for c in candidates if c["stage"] == stage and c.get("score") is not None]
        if rows:
            best = max(rows, key=lambda c: (c["score"], c["candidate_id"]))
            return best, f"best score of the {stage} stage (nothing deployed)"
    return None, "the run has no successful candidate"


def artifacts_with_latency(registry, run_id: str) -> list[dict]:
    """The run's artifacts, each with `latency` {device: measurement} of the file itself."""
    artifacts = registry.get_artifacts(run_id)
    if not artifacts:
        return []
    measurements = _dicts(registry, 
        "SELECT * FROM measurements WHERE run_id = ? AND artifact_id IS NOT NULL AND metric = 'latency' "
        "ORDER BY rowid", [run_id])
    for a in artifacts:
        a["latency"] = {m["device"]: m for m in measurements
                        if m["artifact_id"] == a["artifact_id"] and m["median_ms"] is not None}
    return artifacts


def _dicts(registry, sql: str, params: list) -> list[dict[str, Any]]:
    columns, rows = registry.query(sql, params)
    return [dict(zip(columns, row)) for row in rows]


def _add_layer_costs(registry, data: RunData) -> None:
    """The chosen model's layers with each one's LUT milliseconds, per device that has a LUT."""
    from ..arch import parse_arch
    from ..arch.counting import layer_table
    from ..lut_breakdown import lut_breakdown

    arch = parse_arch(data.chosen["arch"])
    for device in data.devices:
        try:
            costs = lut_breakdown(registry, device, arch, partial=True)
        except NasflowError as error:
            data.lut_notes[device] = str(error)
            continue
        g = costs["geometry"]
        rows = layer_table(arch, g["channels"], g["classes"], g["size"])
        missing = set(costs["missing"])
        data.layers[device] = [LayerCost(r["position"], r["kind"], r["token"], r["macs"], ms, r["position"] not in missing)
                               for r, ms in zip(rows, costs["per_layer"])]
        if missing:
            data.lut_notes[device] = (f"{len(missing)} of {len(rows)} layers are not in the LUT (a width or block "
                                      f"outside the profiled space, as morph produces): drawn without a latency")


def morph_edges(data: RunData) -> list[dict[str, Any]]:
    """Parent -> child pairs of the morph stage, each end with its MACs and accuracy."""
    by_id = {c["candidate_id"]: c for c in data.candidates}
    edges = []
    for child in data.candidates:
        parent = by_id.get(child.get("parent_id"))
        if child["stage"] != "morph" or parent is None:
            continue
        edges.append({"parent": parent, "child": child})
    return edges


def best_so_far(data: RunData) -> list[dict[str, Any]]:
    """The search's score per candidate evaluated, in order, with the best so far."""
    rows, best = [], None
    for number, row in enumerate(data.search_rows, 1):
        score = row.get("score") if row["status"] == "ok" else None
        if score is not None:
            best = score if best is None else max(best, score)
        rows.append({"run": data.label(), "evaluated": number, "score": score, "best_score": best,
                     "arch": row["arch"], "accuracy": row.get("accuracy"),
                     "accuracy_source": row.get("accuracy_source"), "status": row["status"]})
    return rows
