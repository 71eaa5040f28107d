"""Registries written by older schemas open with the current code, every row kept, new columns there."""

from __future__ import annotations

import datetime as dt
import os

import duckdb
import pytest

import nasflow.registry as reg
from nasflow.errors import RegistryError
from nasflow.registry import Registry

NOW = dt.datetime(2026, 1, 2, 3, 4, 5)


def _schema(path) -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    schema: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        schema.setdefault(table, []).append((column, data_type))
    return schema


def _version_1_registry(path) -> None:
    """A registry exactly as nasflow 0.1 (schema version 1) left it, with one row in every table."""
    con = duckdb.connect(str(path))
    con.execute(reg._create_schema_version_sql())
    con.execute(reg.MIGRATIONS[0][2])
    con.execute("INSERT INTO schema_version VALUES (1, 'initial', ?)", [NOW])
    con.execute(
        "INSERT INTO runs (run_id, name, spec_hash, spec_yaml, status, runner, nasflow_version, host, "
        "started_at, finished_at, error) VALUES ('r1', 'old', 'abc', 'name: old', 'finished', 'thread', "
        "'0.1.0', 'box', ?, ?, NULL)", [NOW, NOW],
    )
    for cid, stage, acc in (("c-search", "search", 0.5), ("c-train", "train", 0.8), ("c-fail", "search", None)):
        con.execute(
            "INSERT INTO candidates (candidate_id, run_id, stage, arch, arch_hash, status, params, macs, "
            "accuracy, score, extra, created_at) VALUES (?, 'r1', ?, 'stem_c8_s1-head_c32', 'h', ?, 10, 20, ?, ?, "
            "'{\"genome\": [1]}', ?)",
            [cid, stage, "ok" if acc is not None else "failed", acc, acc, NOW],
        )
    con.execute(
        "INSERT INTO measurements (measurement_id, candidate_id, run_id, device, runtime, artifact_format, "
        "source, metric, median_ms, p90_ms, runs, fingerprint, fingerprint_hash, created_at) VALUES "
        "('m1', 'c-train', 'r1', 'torch-cpu', 'torch', 'pytorch', 'measured', 'latency', 1.5, 1.7, 40, "
        "'{\"cpu\": \"x\"}', 'fp', ?)", [NOW],
    )
    con.execute(
        "INSERT INTO lut VALUES ('torch-cpu', 'fp', 'ir_k3_e1_c8_s1', '1x8x8x8', 0.1, 0.12, 30, 'measured', '{}', ?)",
        [NOW],
    )
    con.execute(
        "INSERT INTO artifacts (artifact_id, candidate_id, run_id, format, path, sha256, size_bytes, max_abs_err, "
        "tolerance, verified, created_at) VALUES ('a1', 'c-train', 'r1', 'onnx', '/x.onnx', 'ff', 100, 1e-6, "
        "1e-4, true, ?)", [NOW],
    )
    con.close()


def test_fresh_and_upgraded_registries_have_the_same_schema(tmp_path):
    old, fresh = tmp_path / "old.duckdb", tmp_path / "fresh.duckdb"
    _version_1_registry(old)
    Registry(old)
    Registry(fresh)
    assert _schema(old) == _schema(fresh)
    documented = {t: [(c, ty) for c, ty, _ in cols] for t, cols in reg.SCHEMA_DOC.items()}
    assert _schema(fresh) == documented


def test_upgrade_keeps_every_row_and_fills_the_new_columns(tmp_path):
    path = tmp_path / "old.duckdb"
    _version_1_registry(path)
    registry = Registry(path)
    versions = [r[0] for r in registry.query("SELECT version FROM schema_version ORDER BY version")[1]]
    assert versions == [m[0] for m in reg.MIGRATIONS]
    for table, expected in (("runs", 1), ("candidates", 3), ("measurements", 1), ("lut", 1), ("artifacts", 1)):
        assert registry.query(f"SELECT count(*) FROM {table}")[1] == [(expected,)]
    run = registry.get_run("r1")
    assert (run["name"], run["status"], run["started_at"], run["pid"]) == ("old", "finished", NOW, None)
    sources = dict(registry.query("SELECT candidate_id, accuracy_source FROM candidates")[1])
    # proxies were the search stage's numbers; a failed candidate has no accuracy to describe
    assert sources == {"c-search": "proxy", "c-train": "full", "c-fail": None}
    train = registry.get_candidates("r1", stage="train")[0]
    assert train["extra"] == {"genome": [1]} and train["test_accuracy"] is None
    m = registry.get_measurements(["c-train"])[0]
    assert (m["median_ms"], m["p90_ms"], m["value"], m["unit"], m["extra"]) == (1.5, 1.7, 1.5, "ms", None)
    assert registry.get_artifacts("r1")[0]["accuracy"] is None
    # the upgraded file takes rows with the new columns
    registry.add_candidates([{"candidate_id": "c-new", "run_id": "r1", "stage": "train", "arch": "a",
                              "arch_hash": "h2", "status": "ok", "accuracy": 0.9, "accuracy_source": "full",
                              "test_accuracy": 0.88}])
    assert registry.get_candidates("r1", stage="train")[-1]["test_accuracy"] == 0.88


def test_released_migrations_are_frozen_text():
    # Migration 1 is what registries in the wild were created with; it must not follow SCHEMA_DOC.
    first = reg.MIGRATIONS[0][2]
    assert first.count("CREATE TABLE") == 5
    assert "accuracy_source" not in first and "pid" not in first


def test_damaged_registry_is_found_when_a_run_opens_it(tmp_path):
    path = tmp_path / "big.duckdb"
    registry = Registry(path)
    registry.add_candidates([
        {"candidate_id": f"c{i}", "run_id": "r", "stage": "search", "arch": "x" * 200, "arch_hash": "h",
         "status": "ok", "extra": {"pad": "y" * 100}}
        for i in range(20000)
    ])
    registry.verify_readable()  # intact: no error
    data = path.read_bytes()
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_bytes(data[: len(data) * 2 // 5])
    before = damaged.read_bytes()
    opened = Registry(damaged)  # the header and catalog are intact, so opening alone succeeds
    with pytest.raises(RegistryError, match="is damaged: table candidates cannot be read"):
        opened.verify_readable()
    assert damaged.read_bytes() == before
    assert os.path.getsize(damaged) == len(before)


def test_a_version_5_registry_gains_the_int8_verification_columns(tmp_path):
    """Artifacts recorded before migration 6 keep their numbers; the new columns start empty and take values."""
    path = tmp_path / "v5.duckdb"
    con = duckdb.connect(str(path))
    con.execute(reg._create_schema_version_sql())
    for version, name, sql in reg.MIGRATIONS:
        if version > 5:
            break
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, name, NOW])
    con.execute(
        "INSERT INTO artifacts (artifact_id, candidate_id, run_id, format, path, sha256, size_bytes, max_abs_err, "
        "tolerance, verified, created_at, accuracy) VALUES ('a1', 'c', 'r1', 'onnx', '/x.onnx', 'ff', 100, 1e-6, "
        "1e-4, true, ?, 0.9)", [NOW],
    )
    con.close()
    registry = Registry(path)
    assert [r[0] for r in registry.query("SELECT version FROM schema_version ORDER BY version")[1]][-1] == 6
    old = registry.get_artifacts("r1")[0]
    assert (old["max_abs_err"], old["accuracy"], old["verified"]) == (1e-6, 0.9, True)
    assert all(old[c] is None for c in ("cosine_diff", "reference_accuracy", "top1_agreement", "failure", "options"))
    registry.add_artifacts([{
        "artifact_id": "a2", "candidate_id": "c", "run_id": "r1", "format": "onnx-int8", "path": "/x.int8.onnx",
        "sha256": "ee", "size_bytes": 50, "max_abs_err": 0.3, "tolerance": 1e-4, "verified": False, "accuracy": 0.8,
        "cosine_diff": 0.01, "reference_accuracy": 0.9, "top1_agreement": 0.85, "max_accuracy_drop": 0.01,
        "failure": "too far", "options": {"calibration_images": 8},
    }])
    new = registry.get_artifacts("r1")[1]
    assert (new["top1_agreement"], new["failure"], new["options"]) == (0.85, "too far", {"calibration_images": 8})
