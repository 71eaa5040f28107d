"""Analytical Edge TPU estimator, its operator-compatibility rules, the device plugin and benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pluggy
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nasflow import hookspecs
from nasflow.edgetpu import (
    HOSTS,
    OP_SUPPORT,
    PARAM_CACHE_BYTES,
    Layer,
    Net,
    estimate_arch,
    estimate_latency,
    layers_from_arch,
    layers_from_module,
    op_compatibility,
)
from nasflow.errors import DeviceError
from nasflow.plugins.devices import edgetpu_model
from nasflow.plugins.devices.edgetpu_model import EdgeTPUModel, EdgeTPUModelOptions
from nasflow.space import build_model, count_macs, parse_arch

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "stem_c16_s1-ir_k3_e6_c24_s2-ir_k3_e3_c24_s1-skip_c24-head_c64"
SE_HSWISH = "stem_c16_s1-ir_k3_e6_c24_s2-ir_k3_e3_c24_s1_se0.25_ahswish-skip_c24-head_c64"


def _estimate(text: str, **kwargs):
    return estimate_arch(parse_arch(text), 3, 32, 10, **kwargs)


# ---------------------------------------------------------------- the estimator


def test_estimate_grows_with_macs():
    widths = [8, 16, 32, 64, 128]
    totals = [_estimate(f"stem_c16_s1-ir_k3_e6_c{w}_s1-ir_k3_e6_c{w}_s1-head_c64").total_ms for w in widths]
    macs = [count_macs(parse_arch(f"stem_c16_s1-ir_k3_e6_c{w}_s1-ir_k3_e6_c{w}_s1-head_c64"), 3, 10, 32) for w in widths]
    assert macs == sorted(macs) and totals == sorted(totals) and len(set(totals)) == len(totals)
    # Same structure, more MACs from a larger image: strictly slower.
    arch = parse_arch(PLAIN)
    assert estimate_arch(arch, 3, 64, 10).total_ms > estimate_arch(arch, 3, 32, 10).total_ms


def test_depthwise_macs_cost_more_than_dense_ones():
    dense = [Layer("c", "pointwise", macs=10_000_000, in_elems=1000, out_elems=1000)]
    dw = [Layer("d", "depthwise", macs=10_000_000, in_elems=1000, out_elems=1000)]
    assert estimate_latency(dw).compute_ms > estimate_latency(dense).compute_ms
    assert HOSTS["usb3"].u_dw < HOSTS["usb3"].u_conv <= 1


def test_parameters_beyond_the_on_chip_cache_are_streamed():
    def fc_net(params: int):
        net = Net(1000, 1)
        net.fc(params // 1000)
        return net.layers

    small, big = fc_net(4_000_000), fc_net(40_000_000)
    est_small, est_big = estimate_latency(small), estimate_latency(big)
    assert est_small.streamed_bytes == 0 and est_small.stream_ms == 0
    assert est_big.tpu_param_bytes > 8 * 2**20 > PARAM_CACHE_BYTES
    assert est_big.streamed_bytes == est_big.tpu_param_bytes - PARAM_CACHE_BYTES
    link = HOSTS["usb3"].link_mb_per_s * 1e6
    assert est_big.stream_ms == pytest.approx(est_big.streamed_bytes / link * 1e3)
    assert est_big.total_ms > est_small.total_ms + est_big.stream_ms * 0.99
    # A larger cache streams less.
    assert estimate_latency(big, param_cache_bytes=30_000_000).stream_ms < est_big.stream_ms


def test_se_and_hswish_are_flagged_and_fall_back_to_the_cpu():
    arch = parse_arch(SE_HSWISH)
    found = op_compatibility(arch)
    fallbacks = {(i.position, i.op) for i in found if i.severity == "cpu_fallback"}
    assert fallbacks == {(2, "hswish"), (2, "se")}
    assert all(i.source.startswith("https://") and i.reason for i in found)
    assert op_compatibility(parse_arch(PLAIN)) == []

    plain, mixed = _estimate(PLAIN), _estimate(SE_HSWISH)
    assert not plain.falls_back and plain.cpu_ms == 0
    assert mixed.falls_back and mixed.fallback_op == "hswish" and mixed.cpu_ms > 0 and mixed.cpu_layers > 0
    assert mixed.fallback_layer.startswith("block1.")
    assert mixed.total_ms > plain.total_ms
    assert mixed.total_ms == pytest.approx(
        mixed.invoke_ms + mixed.link_io_ms + mixed.compute_ms + mixed.layer_overhead_ms + mixed.stream_ms
        + mixed.boundary_ms + mixed.cpu_ms
    )
    # SE alone falls back at its broadcast multiply, unless the compiler is assumed to map it.
    se_only = "stem_c16_s1-ir_k3_e6_c24_s2_se0.25-head_c64"
    assert _estimate(se_only).fallback_op == "se_scale"
    assert not _estimate(se_only, assume_se_mapped=True).falls_back
    assert [i.severity for i in op_compatibility(parse_arch(se_only), assume_se_mapped=True)] == ["slow"]


def test_a_network_that_starts_with_an_unmapped_op_runs_on_the_cpu_alone():
    net = Net(16, 8).act("hswish", name="first")
    net.conv(32, 3)
    est = estimate_latency(net.layers)
    assert est.fallback_index == 0 and est.tpu_layers == 0 and est.edgetpu_ms == 0 and est.boundary_ms == 0
    assert est.total_ms == pytest.approx(est.cpu_ms) and est.cpu_ms > 0


def test_large_depthwise_kernels_are_a_note_not_a_fallback():
    found = op_compatibility(parse_arch("stem_c16_s1-ir_k5_e6_c24_s2-ir_k7_e3_c24_s1-head_c64"))
    assert [(i.position, i.op, i.severity) for i in found] == [(1, "depthwise5x5", "slow"), (2, "depthwise7x7", "slow")]


def test_op_table_has_a_source_for_every_entry():
    assert not OP_SUPPORT["hswish"].on_tpu and not OP_SUPPORT["se_scale"].on_tpu and OP_SUPPORT["conv"].on_tpu
    assert all(entry.source.startswith("https://") for entry in OP_SUPPORT.values())


def test_the_devices_op_support_follows_the_mapping_and_its_options():
    # The device-level form of op_compatibility, which the edgetpu space filters with
    # (tests/test_space_edgetpu.py): SE is unsupported unless assumed mapped, then slow; a 5x5
    # depthwise kernel is slow; 3x3 ReLU blocks run.
    def block(token: str):
        return parse_arch(f"stem_c16_s1-{token}-head_c64").blocks[0]

    model, mapped = EdgeTPUModel(), EdgeTPUModel(EdgeTPUModelOptions(assume_se_mapped=True))
    se = block("ir_k3_e6_c24_s1_se0.25")
    assert model.op_support(se, 16).level == "unsupported" and "host CPU" in model.op_support(se, 16).reason
    assert mapped.op_support(se, 16).level == "slow" and "assumed mapped" in mapped.op_support(se, 16).reason
    assert model.op_support(block("ir_k5_e6_c24_s2"), 16).level == "slow"
    assert model.op_support(block("ir_k7_e3_c24_s1"), 16).level == "slow"
    for plain in ("ir_k3_e6_c24_s2", "fir_k5_e6_c24_s2", "skip_c16"):
        assert model.op_support(block(plain), 16).level == "supported"
    # The same verdicts as op_compatibility on a one-block network.
    for token in ("ir_k3_e6_c24_s1_se0.25", "ir_k5_e6_c24_s2", "ir_k3_e3_c24_s1_ahswish", "ir_k3_e6_c24_s2"):
        found = {i.severity for i in op_compatibility(parse_arch(f"stem_c16_s1-{token}-head_c64"))}
        level = model.op_support(block(token), 16).level
        expected = "unsupported" if "cpu_fallback" in found else "slow" if found else "supported"
        assert level == expected, token


def test_arch_layers_match_nasflow_mac_count_and_the_traced_model():
    arch = parse_arch(SE_HSWISH)
    layers = layers_from_arch(arch, 3, 32, 10)
    assert sum(layer.macs for layer in layers) == count_macs(arch, 3, 10, 32)
    model = build_model(arch, 3, 10)
    from nasflow.edgetpu import _layers_fx, _layers_hooks

    with torch.no_grad():
        traced = _layers_fx(model.eval(), torch.zeros(1, 3, 32, 32))
        hooked = _layers_hooks(model, torch.zeros(1, 3, 32, 32))
    assert sum(layer.macs for layer in traced) == sum(layer.macs for layer in layers)
    assert [layer.op for layer in traced if layer.macs] == [layer.op for layer in layers if layer.macs]
    assert sum(layer.macs for layer in hooked) == sum(layer.macs for layer in layers)
    assert "hswish" in {layer.op for layer in traced} and "se_scale" in {layer.op for layer in traced}


# ---------------------------------------------------------------- the device plugin


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.dw(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_every_measurement_is_an_estimate_and_models_are_left_alone():
    device = EdgeTPUModel(EdgeTPUModelOptions())
    arch = parse_arch(SE_HSWISH)
    archnet = build_model(arch, 3, 10).train()
    block = archnet.blocks[1]  # a single operator, as LUT building times them
    for model, shape in ((archnet, (1, 3, 32, 32)), (TinyNet(), (1, 3, 16, 16)), (block, (1, 24, 16, 16))):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        was_training = model.training
        m = device.measure_model(model, shape)
        assert m.source == "estimated" and m.device == "edgetpu-model"
        assert m.runtime.startswith("edgetpu-model ") and m.runtime.endswith("(analytical)")
        assert m.stats.median_ms > 0 and m.stats.runs == 0 and m.stats.std_ms == 0
        assert m.extra["estimate"]["total_ms"] == pytest.approx(m.stats.median_ms)
        assert model.training == was_training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    whole = device.measure_model(archnet, (1, 3, 32, 32))
    assert whole.extra["estimate"]["fallback_op"] == "hswish"
    assert whole.fingerprint["host"] == "usb3" and whole.fingerprint["constants"]["u_conv"] == HOSTS["usb3"].u_conv


def test_plugin_options_hosts_and_batch():
    model = build_model(parse_arch(PLAIN), 3, 10)
    usb = EdgeTPUModel(EdgeTPUModelOptions()).measure_model(model, (1, 3, 32, 32))
    board = EdgeTPUModel(EdgeTPUModelOptions(host="devboard")).measure_model(model, (1, 3, 32, 32))
    batch = EdgeTPUModel(EdgeTPUModelOptions(batch_size=4)).measure_model(model, (1, 3, 32, 32))
    assert usb.stats.median_ms != board.stats.median_ms
    assert batch.stats.median_ms == pytest.approx(4 * usb.stats.median_ms) and batch.batch_size == 4
    for bad in ({"host": "pcie9"}, {"batch_size": 0}, {"threads": 1}, {"param_cache_mib": 0}):
        with pytest.raises(ValidationError):
            EdgeTPUModelOptions(**bad)
    with pytest.raises(DeviceError):
        EdgeTPUModel(EdgeTPUModelOptions()).measure_model(model, (1, 5, 32, 32))  # wrong channel count
    assert EdgeTPUModel.unavailable_reason() is None  # needs no hardware


def test_plugin_is_provided_through_the_device_hook():
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(edgetpu_model, name="nasflow.plugins.devices.edgetpu_model")
    classes = [cls for result in manager.hook.nasflow_devices() for cls in result]
    assert classes == [EdgeTPUModel] and EdgeTPUModel.name == "edgetpu-model" and EdgeTPUModel.kind == "device"


def test_generic_module_layers_cover_functional_ops():
    layers = layers_from_module(TinyNet(), (2, 3, 16, 16))
    ops = [layer.op for layer in layers]
    assert ops[:2] == ["conv", "depthwise"] and "add" in ops and "global_pool" in ops and ops[-1] == "fc"
    assert layers[0].macs == 16 * 16 * 8 * 3 * 9 and layers[-1].macs == 8 * 10

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 3, 3, 3))
            self.fc = nn.Parameter(torch.zeros(10, 4))

        def forward(self, x):
            y = nn.functional.hardswish(nn.functional.conv2d(x, self.w, padding=1))
            return nn.functional.linear(y.mean((2, 3)), self.fc)

    ops = [(layer.op, layer.macs) for layer in layers_from_module(Functional(), (1, 3, 8, 8))]
    assert ops == [("conv", 8 * 8 * 4 * 27), ("hswish", 0), ("global_pool", 0), ("fc", 40)]


# ---------------------------------------------------------------- benchmark


def _load_benchmark():
    path = ROOT / "benchmarks" / "edgetpu_estimator.py"
    spec = importlib.util.spec_from_file_location("edgetpu_estimator_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("edgetpu_estimator_bench", module)
    spec.loader.exec_module(module)
    return module


def test_reference_models_match_published_sizes():
    bench = _load_benchmark()
    refs = sys.modules["edgetpu_reference_models"]
    for name, expected in refs.EXPECTED_PARAMS_M.items():
        params = sum(layer.params for layer in refs.REFERENCE_MODELS[name]()) / 1e6
        assert params == pytest.approx(expected, rel=0.03), name
    assert set(bench.FIT_SET) | set(bench.HOLDOUT_SET) == set(refs.REFERENCE_MODELS)
    assert not set(bench.FIT_SET) & set(bench.HOLDOUT_SET)


def test_benchmark_runs_and_stored_constants_match_the_fit(tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "edgetpu.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0  # non-zero would mean HOSTS drifted from the fit
    doc = json.loads(out.read_text())
    assert doc["published_source_url"] == "https://coral.ai/docs/edgetpu/benchmarks/"
    for host in ("usb3", "devboard"):
        res = doc["hosts"][host]
        assert res["drift"] == {}
        roles = {row["role"] for row in res["models"]}
        assert roles == {"fit", "holdout"}
        for row in res["models"]:
            assert row["published_ms"] > 0 and row["estimated_ms"] > 0
        assert res["summary"]["fit"]["median_abs_rel_error"] < 0.15
    printed = capsys.readouterr().out
    assert "https://coral.ai/docs/edgetpu/benchmarks/" in printed and "holdout" in printed
