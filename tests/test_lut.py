"""Per-operator latency LUT: which operators a space has, timing them, storing and reusing them."""

from __future__ import annotations

import random

import duckdb
import pytest
import torch

from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.errors import DeviceError
from nasflow.fingerprint import fingerprint_hash
from nasflow.lut import (
    arch_op_details,
    arch_ops,
    build_lut,
    load_or_build_lut,
    lut_entries,
    null_key,
    op_key,
    shape_str,
)
from nasflow.plugins.devices.onnxruntime_cpu import OnnxRuntimeCPU
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.registry import Registry
from nasflow.space import Block, LayerwiseSpace, count_macs, parse_arch

FAST = dict(threads=1, min_seconds=0.0, max_seconds=0.1, max_runs=30)
IN_CHANNELS, NUM_CLASSES, IMAGE = 1, 10, 8  # digits-like input (1, 1, 8, 8)
SPACE = LayerwiseOptions(
    stem_channels=8,
    stages=[{"channels": 8, "layers": 1, "stride": 1}, {"channels": 16, "layers": 2, "stride": 2}],
    kernels=[3],
    expansions=[1, 3],
    head_channels=16,
)


class CountingTorchCPU(TorchCPU):
    """torch-cpu that counts measure_model calls (same name and fingerprint as torch-cpu)."""

    calls = 0

    def measure_model(self, model, input_shape):
        type(self).calls += 1
        return super().measure_model(model, input_shape)


class CountingOnnxRuntimeCPU(OnnxRuntimeCPU):
    calls = 0

    def measure_model(self, model, input_shape):
        type(self).calls += 1
        return super().measure_model(model, input_shape)


@pytest.fixture
def space():
    return LayerwiseSpace(SPACE)


def sampled_archs(space, n=20, seed=0):
    rng = random.Random(seed)
    return [space.to_arch(space.sample(rng)) for _ in range(n)]


def test_op_key_is_canonical_block_token_with_input_channels():
    block = Block("ir", kernel=5, expansion=3, out=24, stride=2)
    assert op_key(block, 16) == "ir_k5_e3_c24_s2@16"
    se = Block("ir", kernel=3, mid=40, out=24, stride=1, se=0.25, act="hswish")
    assert op_key(se, 24) == "ir_k3_m40_c24_s1_se0.25_ahswish@24"
    assert shape_str((1, 16, 8, 8)) == "1x16x8x8"


def test_lut_entries_cover_every_op_of_sampled_archs(space):
    entries = lut_entries(space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    keys = {op.lut_key for op in entries}
    assert len(keys) == len(entries)  # distinct
    # stem, 2 choices at each of 3 positions (skip adds nothing), head, and the null op
    assert len(entries) == 1 + 2 * 3 + 1 + 1
    assert (null_key(IN_CHANNELS), "1x1x8x8") in keys
    assert ("stem_c8_s1@1", "1x1x8x8") in keys
    assert ("ir_k3_e3_c16_s2@8", "1x8x8x8") in keys
    assert ("ir_k3_e1_c16_s1@16", "1x16x4x4") in keys
    assert ("head_c16_n10@16", "1x16x4x4") in keys
    seen = set()
    for arch in sampled_archs(space):
        ops = arch_ops(arch, IN_CHANNELS, NUM_CLASSES, IMAGE)
        assert set(ops) <= keys
        assert len(ops) == 2 + sum(b.kind != "skip" for b in arch.blocks)
        seen |= set(ops)
    assert len(seen) >= len(keys) - 2  # 20 samples of a 12-arch space reach (nearly) every op


def test_op_modules_chain_into_the_network_and_macs_add_up(space):
    torch.manual_seed(0)
    for arch in sampled_archs(space, n=6, seed=1):
        ops = arch_op_details(arch, IN_CHANNELS, NUM_CLASSES, IMAGE)
        x = torch.randn(*ops[0].input_shape)
        with torch.no_grad():
            for op in ops:
                assert tuple(x.shape) == op.input_shape, op.key
                x = op.module().eval()(x)
        assert tuple(x.shape) == (1, NUM_CLASSES)
        assert sum(op.macs for op in ops) == count_macs(arch, IN_CHANNELS, NUM_CLASSES, IMAGE)


def test_arch_ops_skip_layers_contribute_nothing():
    arch = parse_arch("stem_c8_s1-ir_k3_e1_c8_s1-ir_k3_e3_c16_s2-skip_c16-head_c16")
    assert arch_ops(arch, 1, 10, 8) == [
        ("stem_c8_s1@1", "1x1x8x8"),
        ("ir_k3_e1_c8_s1@8", "1x8x8x8"),
        ("ir_k3_e3_c16_s2@8", "1x8x8x8"),
        ("head_c16_n10@16", "1x16x4x4"),
    ]


@pytest.mark.parametrize("device_cls", [TorchCPU, OnnxRuntimeCPU], ids=["torch-cpu", "onnxruntime-cpu"])
def test_build_lut_rows(space, device_cls):
    device = device_cls(device_cls.Options(**FAST))
    progress = []
    rows = build_lut(device, space, IN_CHANNELS, NUM_CLASSES, IMAGE, progress=lambda d, t: progress.append((d, t)))
    entries = lut_entries(space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    assert [(r["op_key"], r["input_shape"]) for r in rows] == [op.lut_key for op in entries]
    fp = device.fingerprint()
    for row in rows:
        assert row["device"] == device.name and row["source"] == "measured"
        assert row["fingerprint_hash"] == fingerprint_hash(fp) and row["fingerprint"] == fp
        assert row["p90_ms"] >= row["median_ms"] > 0 and row["runs"] >= 1
    assert progress[0] == (0, len(entries)) and progress[-1] == (len(entries), len(entries))


def test_lut_stored_reused_refreshed_and_keyed_by_fingerprint(space, tmp_path):
    registry = Registry(tmp_path / "registry.duckdb")
    n = len(lut_entries(space, IN_CHANNELS, NUM_CLASSES, IMAGE))
    CountingTorchCPU.calls = 0
    device = CountingTorchCPU(CountingTorchCPU.Options(**FAST))
    args = (registry, device, space, IN_CHANNELS, NUM_CLASSES, IMAGE)

    table, built = load_or_build_lut(*args)
    assert built and CountingTorchCPU.calls == n and len(table) == n
    _, rows = registry.query("SELECT count(*), min(source), max(source) FROM lut")
    assert rows == [(n, "measured", "measured")]

    again, built = load_or_build_lut(*args)  # a second call measures nothing
    assert not built and CountingTorchCPU.calls == n and again == table

    # A missing entry alone is measured again.
    con = duckdb.connect(str(registry.path))
    con.execute("DELETE FROM lut WHERE op_key LIKE 'head%'")
    con.close()
    _, built = load_or_build_lut(*args)
    assert built and CountingTorchCPU.calls == n + 1

    refreshed, built = load_or_build_lut(*args, refresh=True)  # re-measures everything, replaces rows
    assert built and CountingTorchCPU.calls == 2 * n + 1 and set(refreshed) == set(table)
    _, rows = registry.query("SELECT count(*) FROM lut")
    assert rows == [(n,)]
    _, rows = registry.query("SELECT op_key, input_shape, median_ms FROM lut")
    assert {(k, s): ms for k, s, ms in rows} == refreshed

    # Another thread count is another fingerprint: a table of its own.
    two = CountingTorchCPU(CountingTorchCPU.Options(**{**FAST, "threads": 2}))
    assert fingerprint_hash(two.fingerprint()) != fingerprint_hash(device.fingerprint())
    _, built = load_or_build_lut(registry, two, space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    assert built and CountingTorchCPU.calls == 3 * n + 1
    _, rows = registry.query("SELECT count(DISTINCT fingerprint_hash), count(*) FROM lut")
    assert rows == [(2, 2 * n)]

    # Another device has its own table too.
    CountingOnnxRuntimeCPU.calls = 0
    ort = CountingOnnxRuntimeCPU(CountingOnnxRuntimeCPU.Options(**FAST))
    ort_table, built = load_or_build_lut(registry, ort, space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    assert built and CountingOnnxRuntimeCPU.calls == n and set(ort_table) == set(table)
    _, built = load_or_build_lut(registry, ort, space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    assert not built and CountingOnnxRuntimeCPU.calls == n


def test_lut_keys_follow_the_device_batch_size(space, tmp_path):
    device = TorchCPU(TorchCPU.Options(**FAST, batch_size=2))
    table, _ = load_or_build_lut(Registry(tmp_path / "r.duckdb"), device, space, IN_CHANNELS, NUM_CLASSES, IMAGE)
    assert all(shape.startswith("2x") for _, shape in table)


def test_failed_op_is_a_device_error_naming_the_op(space):
    class Broken(TorchCPU):
        def measure_model(self, model, input_shape):
            raise DeviceError("boom")

    with pytest.raises(DeviceError, match=r"null@1 \(1x1x8x8\).*boom"):
        build_lut(Broken(TorchCPU.Options(**FAST)), space, IN_CHANNELS, NUM_CLASSES, IMAGE)


def test_passes_interleave_the_models_and_keep_each_fastest_median(space):
    """Each op is timed once per pass, passes go over the whole batch, the fastest median wins."""
    from dataclasses import replace

    from nasflow.lut import fastest_of_passes

    order, prepared = [], []
    slow_first = {0: [3.0, 1.0, 2.0], 1: [1.0, 5.0, 4.0]}  # medians each pass returns, per model

    class Scripted(TorchCPU):
        def prepare(self, jobs, progress=None):
            prepared.append(len(jobs))

        def measure_model(self, model, input_shape):
            index = model.index
            order.append(index)
            real = super().measure_model(torch.nn.Identity(), input_shape)
            return replace(real, stats=replace(real.stats, median_ms=slow_first[index][order.count(index) - 1]))

    models = [torch.nn.Identity(), torch.nn.Identity()]
    for i, m in enumerate(models):
        m.index = i
    progress = []
    out = fastest_of_passes(
        Scripted(TorchCPU.Options(**FAST)), [(m, (1, 1, 4, 4)) for m in models], passes=3,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert order == [0, 1, 0, 1, 0, 1]  # interleaved, not model by model
    assert [m.stats.median_ms for m in out] == [1.0, 1.0]
    assert prepared == [2]  # the device prepared the whole batch once, before timing
    assert progress[0] == (0, 6) and progress[-1] == (6, 6)
    with pytest.raises(ValueError, match="passes"):
        fastest_of_passes(Scripted(TorchCPU.Options(**FAST)), [], passes=0)


def test_build_lut_with_passes_measures_every_op_that_often(space):
    """Every op gets `passes` measurements; ops whose passes disagree up to `passes` more."""
    CountingTorchCPU.calls = 0
    rows = build_lut(CountingTorchCPU(TorchCPU.Options(**FAST)), space, IN_CHANNELS, NUM_CLASSES, IMAGE, passes=2)
    assert 2 * len(rows) <= CountingTorchCPU.calls <= 4 * len(rows)


def test_disagreeing_passes_are_measured_again_until_two_agree():
    """A job whose two fastest passes differ by more than AGREEMENT gets one more pass per retry
    (only it); one that never settles is reported as unconfirmed."""
    from dataclasses import replace

    from nasflow.lut import AGREEMENT, confirmed, measure_passes

    script = {0: [1.0, 1.01], 1: [2.0, 1.0, 1.5, 1.02], 2: [1.0, 2.0, 3.0, 4.0, 5.0]}
    order = []

    class Scripted(TorchCPU):
        def measure_model(self, model, input_shape):
            order.append(model.index)
            real = super().measure_model(torch.nn.Identity(), input_shape)
            return replace(real, stats=replace(real.stats, median_ms=script[model.index][order.count(model.index) - 1]))

    models = [torch.nn.Identity() for _ in range(3)]
    for i, m in enumerate(models):
        m.index = i
    progress = []
    out = measure_passes(Scripted(TorchCPU.Options(**FAST)), [(m, (1, 1, 4, 4)) for m in models], passes=2, retries=3,
                         progress=lambda d, t: progress.append((d, t)))
    assert progress[0] == (0, 6) and progress[-1] == (11, 11)
    assert [p for p in progress if p[0] == p[1]] == [(11, 11)]  # ended once, after the retries
    assert order == [0, 1, 2, 0, 1, 2, 1, 2, 1, 2, 2]  # job 1 settles after two extra passes, job 2 never
    assert out.passes_ms[1] == [2.0, 1.0, 1.5, 1.02] and [m.stats.median_ms for m in out.best] == [1.0, 1.0, 1.0]
    assert out.unconfirmed == [2] and out.extra_passes == 3
    assert confirmed([1.0, 1.0 + AGREEMENT]) and not confirmed([1.0, 1.1]) and not confirmed([1.0])
    order.clear()
    single = measure_passes(Scripted(TorchCPU.Options(**FAST)), [(models[0], (1, 1, 4, 4))], passes=1, retries=3)
    assert single.extra_passes == 0 and single.unconfirmed == []  # one pass: nothing to compare
