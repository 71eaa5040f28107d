"""End to end: a real Prefect flow run of every stage, recorded in a real DuckDB registry."""

import hashlib
import os
import stat
from pathlib import Path

import pytest

from nasflow.data import load_dataset
from nasflow.errors import DeviceError
from nasflow.flows.context import RunContext
from nasflow.flows.deploy import _deploy
from nasflow.flows.evaluate import make_devices
from nasflow.flows.pipeline import run_spec
from nasflow.plugin_api import DeviceBackend
from nasflow.registry import Registry
from nasflow.spec import load_spec
from nasflow.train_device import resolve_device

from conftest import tiny_spec_text


def stage_counts(registry, run_id):
    _, rows = registry.query(
        "SELECT stage, count(*) FROM candidates WHERE run_id = ? GROUP BY stage ORDER BY stage", [run_id]
    )
    return dict(rows)


def test_full_pipeline_then_resume(tiny_spec):
    loaded = load_spec(tiny_spec)
    summary = run_spec(loaded)
    registry = Registry(loaded.spec.registry.path)
    run = registry.get_run(summary.run_id)
    assert run["status"] == "finished" and not summary.resumed

    counts = stage_counts(registry, summary.run_id)
    assert counts["search"] == len({r["arch_hash"] for r in registry.get_candidates(summary.run_id, stage="search")})
    assert 1 <= counts["search"] <= 6 and counts["train"] == 1 and counts["morph"] == 1

    # every successful candidate has a real measurement on both devices
    _, rows = registry.query(
        """SELECT c.stage, m.device, m.source, m.median_ms, m.runs FROM candidates c
           JOIN measurements m USING (candidate_id) WHERE c.run_id = ? AND m.artifact_id IS NULL""",
        [summary.run_id],
    )
    devices = {(stage, device) for stage, device, *_ in rows}
    assert {("search", "torch-cpu"), ("search", "onnxruntime-cpu"), ("morph", "torch-cpu")} <= devices
    assert all(source == "measured" and median > 0 and runs >= 1 for _, _, source, median, runs in rows)

    # lineage: search -> train -> morph
    train = registry.get_candidates(summary.run_id, stage="train")[0]
    morph = registry.get_candidates(summary.run_id, stage="morph")[0]
    parent_ids = {c["candidate_id"] for c in registry.get_candidates(summary.run_id, stage="search")}
    assert train["parent_id"] in parent_ids and morph["parent_id"] == train["candidate_id"]
    assert morph["macs"] <= train["macs"]
    assert morph["extra"]["same_arch_as_parent"] == (morph["arch_hash"] == train["arch_hash"])

    # where each accuracy came from: proxies in the search, held-out test accuracy after training
    search_rows = [r for r in registry.get_candidates(summary.run_id, stage="search") if r["status"] == "ok"]
    assert {r["accuracy_source"] for r in search_rows} == {"proxy"}
    assert all(r["test_accuracy"] is None for r in search_rows)  # selection never looks at the test split
    for row in (train, morph):
        assert row["accuracy_source"] == "full" and 0 <= row["test_accuracy"] <= 1
    _, units = registry.query("SELECT DISTINCT metric, unit FROM measurements WHERE run_id = ?", [summary.run_id])
    assert units == [("latency", "ms")]
    _, same = registry.query("SELECT count(*) FROM measurements WHERE value IS DISTINCT FROM median_ms")
    assert same == [(0,)]

    # deploy: a verified ONNX file in <out_dir>/<run id>/ whose sha256 matches the registry, with
    # the user's umask, scored on the test split by onnxruntime, timed as an artifact
    artifacts = registry.get_artifacts(summary.run_id)
    assert len(artifacts) == 1 and artifacts[0]["verified"]
    assert [a["artifact_id"] for a in summary.artifacts] == [artifacts[0]["artifact_id"]]
    path = Path(artifacts[0]["path"])
    assert path.parent == (loaded.spec.deploy.out_dir / summary.run_id).resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == artifacts[0]["sha256"]
    deployed = next(c for c in registry.get_candidates(summary.run_id) if c["candidate_id"] == artifacts[0]["candidate_id"])
    test_size = len(load_dataset(loaded.spec.dataset).test_y)
    assert abs(artifacts[0]["accuracy"] - deployed["test_accuracy"]) <= 2 / test_size  # the same model, float32
    _, onnx_rows = registry.query(
        "SELECT device, artifact_format, source FROM measurements WHERE artifact_id = ?",
        [artifacts[0]["artifact_id"]],
    )
    assert onnx_rows == [("onnxruntime-cpu", "onnx", "measured")]
    assert summary.front, "the Pareto front is empty"

    # re-running the same spec resumes: nothing duplicated, nothing retrained
    before = {t: registry.query(f"SELECT count(*) FROM {t}")[1][0][0] for t in ("candidates", "measurements", "artifacts")}
    ckpt = Path(train["extra"]["checkpoint"])
    mtime = ckpt.stat().st_mtime_ns
    again = run_spec(load_spec(tiny_spec))
    assert again.resumed and again.run_id == summary.run_id
    after = {t: registry.query(f"SELECT count(*) FROM {t}")[1][0][0] for t in ("candidates", "measurements", "artifacts")}
    assert after == before
    assert again.stages["search"]["evaluated"] == 0 and again.stages["train"]["trained"] == 0
    assert again.stages["morph"]["compressed"] == 0
    assert ckpt.stat().st_mtime_ns == mtime
    assert again.resume_message.startswith("resumed: finished work was reused") and "train 1" in again.resume_message

    # changed training settings: the search is reused, a model trained with them lands beside the
    # old one, and morph and deploy follow the new one
    tiny_spec.write_text(tiny_spec.read_text().replace("config: {epochs: 2}", "config: {epochs: 1}"))
    changed = run_spec(load_spec(tiny_spec))
    assert changed.run_id == summary.run_id
    assert changed.stages["search"]["evaluated"] == 0 and changed.stages["train"]["trained"] == 1
    trains = registry.get_candidates(summary.run_id, stage="train")
    assert len(trains) == 2 and trains[0]["parent_id"] == trains[1]["parent_id"] and trains[1]["train_epochs"] == 1
    assert trains[0]["extra"]["stage_key"] != trains[1]["extra"]["stage_key"]
    morphs = registry.get_candidates(summary.run_id, stage="morph")
    assert [m["parent_id"] for m in morphs] == [trains[0]["candidate_id"], trains[1]["candidate_id"]]
    assert len(registry.get_artifacts(summary.run_id)) == 2 and len(changed.artifacts) == 1
    assert changed.artifacts[0]["candidate_id"] in {trains[1]["candidate_id"], morphs[1]["candidate_id"]}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifacts[0]["sha256"]  # the old file is untouched

    # a new out_dir deploys again and reuses everything before it
    text = tiny_spec.read_text()
    assert f"out_dir: {tiny_spec.parent / 'deploy'}" in text
    tiny_spec.write_text(text.replace(f"out_dir: {tiny_spec.parent / 'deploy'}", f"out_dir: {tiny_spec.parent / 'moved'}"))
    moved = run_spec(load_spec(tiny_spec))
    assert moved.run_id == summary.run_id
    assert (moved.stages["train"]["trained"], moved.stages["train"]["reused"]) == (0, 1)
    assert (moved.stages["morph"]["compressed"], moved.stages["deploy"]["reused"]) == (0, 0)
    assert Path(moved.artifacts[0]["path"]).parent == (tiny_spec.parent / "moved" / summary.run_id).resolve()
    _, dupes = registry.query("SELECT count(*) - count(DISTINCT candidate_id) FROM candidates")
    assert dupes == [(0,)]

    # a device that cannot time an artifact leaves a failed measurement beside the verified artifact
    ctx = RunContext(summary.run_id, load_spec(tiny_spec).spec)
    devices = {"onnxruntime-cpu": make_devices(ctx.spec.devices)["onnxruntime-cpu"], "flaky": FlakyDevice()}
    artifact, mrows = _deploy(ctx, deployed, "onnx", devices)
    assert artifact["verified"] and artifact["accuracy"] is not None
    assert {(m["device"], m.get("median_ms") is None) for m in mrows} == {("onnxruntime-cpu", False), ("flaky", True)}
    failed = next(m for m in mrows if m["device"] == "flaky")
    assert failed["extra"] == {"error": "flaky: lost the connection"} and failed["artifact_id"] == artifact["artifact_id"]


class FlakyDevice(DeviceBackend):
    """A device whose connection drops whenever it is asked to time a deployed file."""

    name = "flaky"
    artifact_formats = ("onnx",)

    def fingerprint(self):
        return {"device": "flaky"}

    def measure_model(self, model, input_shape):
        raise DeviceError("flaky: lost the connection")

    def measure_artifact(self, path, fmt, input_shape):
        raise DeviceError("flaky: lost the connection")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stages_can_be_switched_off(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(tiny_spec_text(tmp_path, name="only-search", profile=False, train=False, morph=False, deploy=False))
    summary = run_spec(load_spec(path))
    assert set(summary.stages) == {"search"}
    registry = Registry(tmp_path / "registry.duckdb")
    assert set(stage_counts(registry, summary.run_id)) == {"search"}
    assert registry.get_artifacts(summary.run_id) == []
    assert registry.get_run(summary.run_id)["train_device"] == str(resolve_device("auto"))  # execution.device default


def test_dask_cluster_gives_the_same_rows_as_threads(tmp_path):
    pytest.importorskip("prefect_dask")
    results = {}
    for runner in ("thread", "dask"):
        folder = tmp_path / runner
        folder.mkdir()
        path = folder / "s.yaml"
        path.write_text(
            # accuracy-only scores: a latency-weighted score is noisy, so the search path could differ
            tiny_spec_text(folder, name="same", runner=runner, objectives="{reward: accuracy}",
                           profile=False, train=False, morph=False, deploy=False)
        )
        summary = run_spec(load_spec(path))
        rows = Registry(folder / "registry.duckdb").get_candidates(summary.run_id, stage="search")
        results[runner] = sorted((r["arch"], r["status"], r["params"], r["macs"], round(r["accuracy"], 6)) for r in rows)
    assert results["thread"] == results["dask"]


def test_search_on_lut_latency_records_sources_and_warns_on_drift(tmp_path):
    from nasflow.flows.latency import LatencyDriftWarning

    text = tiny_spec_text(tmp_path, name="lut", train=False, morph=False, deploy=False)
    text = text.replace("profile: {enabled: true}", "profile: {enabled: true, lut: true}")
    text = text.replace("  strategy: evolution\n", "  strategy: evolution\n  latency: lut\n  drift: {fraction: 1.0, window: 5}\n")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    # ONNX Runtime pays its per-call cost once per LUT entry: the plain sum overestimates whole
    # models about 2x (see the latency fidelity figures), which the drift check must catch.
    with pytest.warns(LatencyDriftWarning, match="onnxruntime-cpu"):
        summary = run_spec(load_spec(path))
    registry = Registry(tmp_path / "registry.duckdb")
    _, lut_rows = registry.query("SELECT device, count(*) FROM lut GROUP BY device ORDER BY device")
    assert [d for d, n in lut_rows] == ["onnxruntime-cpu", "torch-cpu"] and all(n > 3 for _, n in lut_rows)
    _, sources = registry.query(
        "SELECT source, count(DISTINCT candidate_id) FROM measurements WHERE run_id = ? GROUP BY source ORDER BY source",
        [summary.run_id],
    )
    n = len(registry.get_candidates(summary.run_id, stage="search"))
    assert sources == [("lut", n), ("measured", n)]
    # the summary shows the measured number where both exist
    assert all(row["latency_source"] == "measured" for row in summary.front)
