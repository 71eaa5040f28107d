"""The width-aware latency model fitted to a LUT, and MorphNet's latency target built on it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nasflow.arch import count_macs, parse_arch
from nasflow.arch.operators import Operator
from nasflow.errors import NasflowError, PluginError, SpecError
from nasflow.lut import arch_op_details, build_lut, lut_entries
from nasflow.space import LayerwiseSpace, build_model
from nasflow.spec import parse_spec
from nasflow.width_latency import WidthLatencyModel

from specs import tiny_spec_text
from test_predictors import GEOMETRY, SPACE, FakeDevice, table_of

NULL_MS = 0.05
RATES = {"dense": (0.01, 0.002, 0.004), "depthwise": (0.02, 0.006, 0.003), "stem": (0.03, 0.002, 0.004), "head": (0.04, 0.002, 0.004)}


def linear_ms(op: Operator) -> float:
    """A device whose operators cost exactly the model's form (plus the per-call cost)."""
    if op.family == "null":
        return NULL_MS
    intercept, per_mmac, per_kact = RATES[op.family]
    return NULL_MS + intercept + per_mmac * op.macs / 1e6 + per_kact * op.activations / 1e3


@pytest.fixture(scope="module")
def space():
    return LayerwiseSpace(SPACE)


@pytest.fixture(scope="module")
def ops(space):
    return lut_entries(space, *GEOMETRY, 1)


def test_fit_recovers_a_linear_device_and_prices_widths_the_lut_never_timed(ops):
    table = {op.lut_key: linear_ms(op) for op in ops}
    model = WidthLatencyModel.fit("linear", table, ops, *GEOMETRY)
    assert model.null_ms == NULL_MS and model.fit_error < 1e-6
    # An architecture with widths no LUT entry has (mid 29, head 27): its operators miss the table...
    arch = parse_arch("stem_c8_s1-ir_k3_e1_c8_s1-ir_k5_m29_c16_s2-ir_k3_m40_c16_s1-head_c27")
    details = arch_op_details(arch, *GEOMETRY)
    assert any(op.lut_key not in table for op in details)
    # ...and the model prices them at the device's rates (stem and head, one entry each, borrow
    # the pooled rates: close, not exact).
    expected = NULL_MS + sum(linear_ms(op) - NULL_MS for op in details)
    assert model.predict(arch) == pytest.approx(expected, rel=1e-2)
    dense = model.rates["dense"]
    assert (dense.per_mmac_ms, dense.per_kact_ms) == pytest.approx(RATES["dense"][1:], rel=1e-3)


def test_fewer_channels_never_cost_more(space, ops):
    """On a real LUT (the deterministic fake device) the fitted rates are non-negative: shrinking
    a group lowers or keeps the predicted latency, and the fit reproduces the LUT it came from."""
    table = table_of(build_lut(FakeDevice(), space, *GEOMETRY))
    model = WidthLatencyModel.fit("fake", table, ops, *GEOMETRY)
    assert model.fit_error < 0.25
    arch = parse_arch("stem_c8_s1-ir_k3_e3_c8_s1-ir_k5_e3_c16_s2-ir_k3_e3_c16_s1-head_c32")
    base = model.predict(arch)
    for field, width in (("head", 16),):
        assert model.predict(dataclasses.replace(arch, **{field: width})) <= base
    blocks = list(arch.blocks)
    blocks[1] = blocks[1].with_width("mid", 10)
    assert model.predict(dataclasses.replace(arch, blocks=tuple(blocks))) <= base
    assert all(r.per_mmac_ms >= 0 and r.per_kact_ms >= 0 and r.intercept_ms >= 0 for r in model.rates.values())


def test_a_lut_too_small_to_fit_is_refused(ops):
    table = {op.lut_key: linear_ms(op) for op in ops[:3]}  # null, stem and one block
    with pytest.raises(NasflowError, match="needs at least 3"):
        WidthLatencyModel.fit("tiny", table, ops, *GEOMETRY)


# ------------------------------------------------------------------ morphnet's latency target


def _context(model, digits, latency):
    from nasflow.config import TrainConfig
    from nasflow.plugin_api import CompressContext

    return CompressContext(model, model.arch, digits, TrainConfig(batch_size=64), digits.input_shape,
                           latency=latency, objective_device="linear")


def test_morphnet_latency_target_prices_channels_and_expands_to_a_latency_budget(ops):
    from nasflow.config import DatasetConfig
    from nasflow.data import load_dataset
    from nasflow.plugins.compress.morphnet import MorphNetCompressor, channel_costs

    digits = load_dataset(DatasetConfig())
    model_ = WidthLatencyModel.fit("linear", {op.lut_key: linear_ms(op) for op in ops}, ops, *GEOMETRY)
    arch = parse_arch("stem_c8_s1-ir_k3_e3_c8_s1-ir_k5_e3_c16_s2-ir_k3_e3_c16_s1-head_c32")
    costs = channel_costs(arch, 1, 10, (8, 8), "latency", model_)
    # A channel's latency cost is the model's slope: one more channel of a group, priced.
    for name, cost in costs.items():
        assert cost > 0, name
    torch.manual_seed(0)
    net = build_model(arch, 1, 10).eval()
    options = MorphNetCompressor.Options(target="latency", budget=0.95, reg_epochs=1, finetune_epochs=0, strength=0.255)
    result = MorphNetCompressor(options).compress(_context(net, digits, {"linear": model_}))
    stats = result.stats
    assert stats["latency_ms_before"] == pytest.approx(model_.predict(arch))
    assert stats["latency_ms_after"] == pytest.approx(model_.predict(result.arch))
    assert stats["latency_ms_after"] <= 0.95 * stats["latency_ms_before"] + 1e-9
    assert stats["budget_resource"] == "latency_ms" and stats["latency_source"] == "estimated"
    assert count_macs(result.arch, 1, 10, (8, 8)) < count_macs(arch, 1, 10, (8, 8))
    # Without the device's model the target is refused, naming what is there.
    with pytest.raises(PluginError, match="target 'latency' on linear needs that device's latency model"):
        MorphNetCompressor(options).compress(_context(net, digits, {}))


def test_a_latency_model_that_prices_no_channel_is_refused_by_name():
    from nasflow.config import DatasetConfig
    from nasflow.data import load_dataset
    from nasflow.plugins.compress.morphnet import MorphNetCompressor
    from nasflow.width_latency import Rates

    digits = load_dataset(DatasetConfig())
    flat = Rates(0.05, 0.0, 0.0)  # all of the LUT's time in intercepts: width costs nothing
    model_ = WidthLatencyModel("flat", 0.01, {}, flat, *GEOMETRY, entries=4)
    net = build_model(parse_arch("stem_c8_s1-ir_k3_e3_c8_s1-head_c32"), 1, 10).eval()
    options = MorphNetCompressor.Options(target="latency", reg_epochs=1, finetune_epochs=0)
    ctx = _context(net, digits, {"flat": model_})
    ctx.objective_device = "flat"
    with pytest.raises(PluginError, match=r"no channel of .* costs anything \(flat: fitted to 4 LUT entries"):
        MorphNetCompressor(options).compress(ctx)


def test_spec_refuses_a_latency_target_without_a_lut(tmp_path):
    text = tiny_spec_text(tmp_path, profile=False).replace(
        "options: {reg_epochs: 1, finetune_epochs: 1}", "options: {reg_epochs: 1, finetune_epochs: 1, target: latency}")
    with pytest.raises(SpecError, match="'morphnet' prices channels by latency on torch-cpu, from a model fitted to that device's latency LUT"):
        parse_spec(text)
    other = text.replace("target: latency}", "target: latency, latency_device: litert}")
    with pytest.raises(SpecError, match="latency_device 'litert' is not in devices"):
        parse_spec(other)


def test_the_morph_stage_fits_the_model_to_the_stored_lut(tmp_path):
    """A real run: the profile stage builds torch-cpu's LUT, the morph stage prices channels with
    a model fitted to it and records which model it used."""
    from nasflow.flows.pipeline import run_spec
    from nasflow.registry import Registry
    from nasflow.spec import LoadedSpec

    text = tiny_spec_text(tmp_path, name="latency-target", deploy=False).replace(
        "profile: {enabled: true}", "profile: {enabled: true, lut: true, passes: 1}").replace(
        "options: {reg_epochs: 1, finetune_epochs: 1}", "options: {reg_epochs: 1, finetune_epochs: 1, target: latency, strength: 0.24, min_channels: 1}")
    # (min_channels: the channel costs come from a measured LUT; a layer losing every channel must not fail the run)
    assert "lut: true" in text and "target: latency" in text
    loaded = LoadedSpec(parse_spec(text), tmp_path / "spec.yaml", text)
    summary = run_spec(loaded)
    morph = Registry(loaded.spec.registry.path).get_candidates(summary.run_id, stage="morph")[0]
    assert morph["status"] == "ok", morph.get("error")
    extra = morph["extra"]
    assert extra["latency_device"] == "torch-cpu" and extra["latency_source"] == "estimated"
    assert extra["latency_model"].startswith("torch-cpu: fitted to ")
    assert extra["latency_ms_after"] <= extra["latency_ms_before"]  # shrink only: never slower
