"""Device operator support (`DeviceBackend.op_support`) and the `edgetpu` space that filters the
layer-wise space through it: levels and reasons, what is dropped, validation messages, a
third-party device's filter, and that what the space produces runs on the device and is in its LUT."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nasflow.arch import Block, parse_arch
from nasflow.arch.operators import arch_operators
from nasflow.edgetpu import op_compatibility
from nasflow.errors import ArchError, SpecError
from nasflow.plugin_api import Geometry, OpSupport
from nasflow.plugins import get_plugins
from nasflow.plugins.devices.edgetpu_device import EdgeTPUDevice
from nasflow.plugins.devices.edgetpu_model import EdgeTPUModel, EdgeTPUModelOptions
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.spaces import known_geometry
from nasflow.spaces.edgetpu import EdgeTPUSpace, EdgeTPUSpaceOptions, block_label
from nasflow.spaces.layerwise import LayerwiseOptions, LayerwiseSpace, StageOptions
from nasflow.spec import build_space, load_spec, parse_spec

from test_plugins import install_dist, nasflow_cli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = Geometry(1, 10, 8)
SMALL = dict(
    stem_channels=8, head_channels=16,
    stages=[StageOptions(channels=8, layers=2), StageOptions(channels=16, layers=1, stride=2)],
)
# Every kind of block the Edge TPU treats differently: SE, hard-swish, swish, 5x5 depthwise, fir.
WIDE = dict(SMALL, kinds=["fir", "ir"], kernels=[3, 5], expansions=[3.0, 6.0], se_ratios=[0.0, 0.25],
            activations=["relu", "hswish", "swish"])


def _block(token: str) -> Block:
    return parse_arch(f"stem_c16_s1-{token}-head_c64").blocks[0]


def _space(geometry=DIGITS, **options) -> EdgeTPUSpace:
    return EdgeTPUSpace(EdgeTPUSpaceOptions(**options), geometry)


def _edgetpu_verdict(block: Block) -> str:
    """What the edgetpu-model device must say about `block`, from the block alone (not from the mapping)."""
    if block.kind == "skip":
        return "supported"
    if block.se > 0 or block.act in ("hswish", "swish"):
        return "unsupported"
    return "slow" if block.kind == "ir" and block.kernel >= 5 else "supported"


# ---------------------------------------------------------------- op_support on the devices


@pytest.mark.parametrize("device", [EdgeTPUModel(), EdgeTPUDevice()], ids=["edgetpu-model", "edgetpu"])
@pytest.mark.parametrize(
    "token, level, says",
    [
        ("ir_k3_e6_c24_s1_se0.25", "unsupported", "squeeze-excite's broadcast Mul"),
        ("fir_k3_e6_c24_s1_se0.25", "unsupported", "squeeze-excite's broadcast Mul"),
        ("ir_k3_e6_c24_s1_ahswish", "unsupported", "HARD_SWISH is not mapped"),
        ("fir_k3_e6_c24_s1_aswish", "unsupported", "swish (x * sigmoid(x))"),
        ("ir_k5_e6_c24_s2", "slow", "depthwise kxk with k >= 5"),
        ("ir_k7_e3_c24_s1", "slow", "depthwise kxk with k >= 5"),
        ("ir_k3_e1_c24_s1_g2", "unsupported", "grouped (non-depthwise) convolution"),
        ("fir_k5_e8_c24_s2", "supported", ""),
        ("fir_k3_e3_c24_s1", "supported", ""),
        ("ir_k3_e6_c24_s1", "supported", ""),
        ("skip_c16", "supported", ""),
    ],
)
def test_edgetpu_devices_give_a_level_and_a_sourced_reason(device, token, level, says):
    support = device.op_support(_block(token), 16)
    assert isinstance(support, OpSupport) and support.level == level
    if level == "supported":
        assert support.reason == ""
    else:
        assert says in support.reason and "https://" in support.reason
        assert ("host CPU" in support.reason) == (level == "unsupported")


def test_a_block_with_two_unmapped_operators_names_both():
    reason = EdgeTPUModel().op_support(_block("ir_k5_e6_c24_s1_se0.25_ahswish"), 16).reason
    assert "hswish runs on the host CPU" in reason and "se runs on the host CPU" in reason
    assert "depthwise5x5" not in reason  # the slow kernel is not the worst of it


def test_assume_se_mapped_makes_squeeze_excite_slow_not_unsupported():
    mapped = EdgeTPUModel(EdgeTPUModelOptions(assume_se_mapped=True))
    support = mapped.op_support(_block("ir_k3_e6_c24_s1_se0.25"), 16)
    assert support.level == "slow" and "assumed mapped" in support.reason
    assert mapped.op_support(_block("ir_k3_e6_c24_s1_ahswish"), 16).level == "unsupported"


def test_devices_without_an_operator_table_support_everything():
    assert TorchCPU().op_support(_block("ir_k5_e6_c24_s1_se0.25_ahswish"), 16) == OpSupport("supported", "")


def test_op_support_agrees_with_op_compatibility_on_one_block_networks():
    device = EdgeTPUModel()
    for block in itertools.chain.from_iterable(LayerwiseSpace(LayerwiseOptions(**WIDE), DIGITS).choices):
        found = {i.severity for i in op_compatibility(parse_arch(f"stem_c8_s1-{block.token()}-head_c16"))}
        expected = "unsupported" if "cpu_fallback" in found else "slow" if found else "supported"
        assert device.op_support(block, 8).level == expected == _edgetpu_verdict(block), block.token()


# ---------------------------------------------------------------- the space drops exactly those


def test_default_space_is_mobilenet_edgetpu_like_and_drops_only_the_5x5_depthwise_ir():
    space = EdgeTPUSpace(None, DIGITS)
    cfg = space.options
    assert (cfg.kinds, cfg.kernels, cfg.expansions, cfg.se_ratios, cfg.activations) == (
        ["fir", "ir"], [3, 5], [3.0, 6.0, 8.0], [0.0], ["relu"])
    assert (cfg.device, cfg.keep) == ("edgetpu-model", ["supported"])
    assert get_plugins().get("space", "edgetpu").cls is EdgeTPUSpace
    assert {block_label(d.block) for d in space.dropped} == {"ir_k5_e3", "ir_k5_e6", "ir_k5_e8"}
    assert all(d.support.level == "slow" for d in space.dropped)
    for choices in space.choices:
        labels = {block_label(b) for b in choices if b.kind != "skip"}
        assert labels == {f"{kind}_k{k}_e{e}" for kind, k in (("fir", 3), ("fir", 5), ("ir", 3)) for e in (3, 6, 8)}


@pytest.mark.parametrize("keep", [["supported"], ["supported", "slow"]])
@pytest.mark.parametrize("assume_se_mapped", [False, True])
def test_the_filter_drops_exactly_what_the_device_does_not_run_well(keep, assume_se_mapped):
    space = _space(**WIDE, keep=keep, device_options={"assume_se_mapped": assume_se_mapped})
    base = LayerwiseSpace(LayerwiseOptions(**WIDE), DIGITS)

    def verdict(block: Block) -> str:
        level = _edgetpu_verdict(block)
        if assume_se_mapped and block.kind != "skip" and block.se > 0 and block.act == "relu":
            return "slow"  # SE maps, at a cost; the activation is the only other unmapped operator here
        return level

    for layer, (kept, offered) in enumerate(zip(space.choices, base.choices)):
        expected = [b for b in offered if verdict(b) in keep]
        assert kept == expected  # same blocks, same (genome) order
        dropped = [d.block for d in space.dropped if d.layer == layer]
        assert dropped == [b for b in offered if b not in expected]
    levels = {d.support.level for d in space.dropped}
    assert "unsupported" in levels and ("slow" in levels) == (keep == ["supported"])


def test_notes_list_what_was_dropped_where_and_why():
    notes = _space(**SMALL, kinds=["fir", "ir"], kernels=[3, 5], expansions=[6.0], se_ratios=[0.0, 0.25]).notes()
    assert notes[0] == "device 'edgetpu-model' filter (keep: supported): 10 of 25 candidate blocks kept over 3 layers"  # 3 of 8 per layer, and the skip
    slow = [n for n in notes if n.startswith("dropped ir_k5_e6 in all 3 layers (slow): depthwise5x5")]
    se = [n for n in notes if n.startswith("dropped fir_k3_e6_se0.25, fir_k5_e6_se0.25, ir_k3_e6_se0.25, "
                                           "ir_k5_e6_se0.25 in all 3 layers (unsupported): se runs on the host CPU")]
    assert len(slow) == len(se) == 1 and len(notes) == 3
    nothing = _space(**SMALL, kinds=["fir"], kernels=[3], expansions=[6.0]).notes()
    assert nothing == ["device 'edgetpu-model' filter (keep: supported): 4 of 4 candidate blocks kept over 3 layers"]


def test_a_dropped_block_is_named_with_the_devices_reason():
    space = _space(**SMALL, kinds=["ir"], kernels=[3, 5], expansions=[6.0])
    kept = "stem_c8_s1-ir_k3_e6_c8_s1-ir_k3_e6_c8_s1-ir_k3_e6_c16_s2-head_c16"
    assert space.from_arch(kept) == (0, 0, 0)
    arch = kept.replace("ir_k3_e6_c8_s1", "ir_k5_e6_c8_s1", 1)
    with pytest.raises(ArchError, match=r"block 'ir_k5_e6_c8_s1' of layer 0 was dropped for device 'edgetpu-model' \(slow\): depthwise5x5"):
        space.from_arch(arch)


def test_bad_filter_options_are_refused():
    with pytest.raises(SpecError, match=r"space: 'nosuch' is not a registered device backend; available: .*edgetpu-model"):
        parse_spec(SPEC.replace("OPTIONS", "{device: nosuch}"))
    with pytest.raises(SpecError, match=r"space: invalid options for device backend 'edgetpu-model': host"):
        parse_spec(SPEC.replace("OPTIONS", "{device_options: {host: pcie}}"))
    with pytest.raises(SpecError, match=r"space.options: .*keep.*must include 'supported'"):
        parse_spec(SPEC.replace("OPTIONS", "{keep: [slow]}"))


# ---------------------------------------------------------------- validation

SPEC = """name: t
dataset: {name: digits}
space:
  name: edgetpu
  options: OPTIONS
search: {strategy: random, budget: 2}
"""


def test_a_filter_that_leaves_a_layer_without_candidates_is_one_line_at_validation():
    # Only hard-swish blocks, no skips: nothing is left in any layer.
    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace("OPTIONS", "{activations: [hswish], allow_skip: false}"), "s.yaml")
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("s.yaml:3: space: the filter for device 'edgetpu-model' (keep: "
                                                    "supported) leaves all 5 layers with no candidate block (")
    assert "HARD_SWISH is not mapped" in lines[0] and "offer blocks the device supports" in lines[0]
    assert "keep slow ones" not in lines[0]  # keeping slow blocks would not help here
    # Only squeeze-excite: refused, not quietly replaced by blocks without it.
    with pytest.raises(SpecError, match=r"leaves all 5 layers with no candidate block .*squeeze-excite's broadcast Mul"):
        parse_spec(SPEC.replace("OPTIONS", "{se_ratios: [0.25], allow_skip: false}"), "s.yaml")
    # Only 5x5 depthwise ir: slow, so keeping slow blocks is the way out, and the message says so.
    with pytest.raises(SpecError, match=r"leaves layers 0, 1, 3 with no candidate block .*keep: \[supported, slow\]"):
        parse_spec(SPEC.replace("OPTIONS", "{kinds: [ir], kernels: [5]}"), "s.yaml")
    # Layers after a stage's first still have their skip; only the stages' first layers are empty.
    parse_spec(SPEC.replace("OPTIONS", "{kinds: [ir], kernels: [5], keep: [supported, slow]}"))


def test_an_empty_layer_still_has_shapes_for_the_supernet_check():
    space = _space(**SMALL, activations=["swish"])
    assert space.problems() and space.size() == 0
    supernet = space.supernet()
    assert [len(layer.candidates) for layer in supernet.layers] == [0, 1, 0]  # layer 1 keeps its skip
    assert [b.out for b in supernet.skeleton.blocks] == [8, 8, 16]


def test_validate_prints_what_was_dropped_and_why(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("OPTIONS", "{se_ratios: [0, 0.25], activations: [relu, hswish]}"))
    out = nasflow_cli(tmp_path, "validate", str(spec), NASFLOW_DISABLE_PLUGIN_AUTOLOAD="1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "space edgetpu: 5 decisions, 72,900 genomes" in lines
    assert "  device 'edgetpu-model' filter (keep: supported): 47 of 242 candidate blocks kept over 5 layers" in lines
    dropped = [line for line in lines if line.startswith("  dropped ")]
    assert any(l.startswith("  dropped ir_k5_e3, ir_k5_e6, ir_k5_e8 in all 5 layers (slow): depthwise5x5") for l in dropped)
    assert any("_ahswish" in l and "(unsupported): hswish runs on the host CPU" in l for l in dropped)
    assert any("_se0.25 in all 5 layers (unsupported): se runs on the host CPU" in l for l in dropped)


def test_the_example_spec_searches_this_space_on_digits():
    spec = load_spec(ROOT / "examples" / "edgetpu.yaml").spec
    assert spec.space.name == "edgetpu" and spec.dataset.name == "digits"
    assert spec.objectives.device == spec.space.options["device"] == "edgetpu-model"
    space = build_space(spec, known_geometry(spec.dataset))
    assert isinstance(space, EdgeTPUSpace) and space.problems() == []
    assert {block_label(d.block) for d in space.dropped} == {"ir_k5_e3", "ir_k5_e6", "ir_k5_e8"}


# ---------------------------------------------------------------- a third-party device filters it too

FUSSY_DEVICE = '''
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, OpSupport


class Fussy(DeviceBackend):
    """Runs only plain inverted residuals; wide kernels are slow, fused blocks it cannot run."""

    name = "fussy-npu"

    def fingerprint(self):
        return {"device_model": "fussy"}

    def measure_model(self, model, input_shape):
        raise NotImplementedError("only asked about operators here")

    def op_support(self, block, in_channels):
        if block.kind == "fir":
            return OpSupport("unsupported", "no dense kxk convolutions on this NPU")
        if block.kind == "ir" and block.kernel > 3:
            return OpSupport("slow", f"kernel {block.kernel} is emulated")
        if block.kind == "ir" and in_channels < 24 and block.expansion > 3:
            return OpSupport("slow", f"expansion {block.expansion:g} of {in_channels} channels spills")
        return OpSupport()


@hookimpl
def nasflow_devices():
    return [Fussy]
'''

CHECK_SAMPLES = '''
import json, random, sys
from nasflow.plugin_api import Geometry
from nasflow.spaces.edgetpu import EdgeTPUSpace, EdgeTPUSpaceOptions
from nasflow.arch import block_shapes

space = EdgeTPUSpace(EdgeTPUSpaceOptions.model_validate(json.loads(sys.argv[1])), Geometry(1, 10, 8))
rng = random.Random(0)
levels = set()
for _ in range(100):
    arch = space.to_arch(space.sample(rng))
    for block, shape in zip(arch.blocks, block_shapes(arch, 1, (8, 8))):
        levels.add(space.device.op_support(block, shape.in_channels).level)
print(json.dumps({"type": type(space.device).__name__, "levels": sorted(levels),
                  "kinds": sorted({b.kind for c in space.choices for b in c})}))
'''


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_dist(site, "nasflow-fussy", "0.1.0", "nasflow_fussy", FUSSY_DEVICE, "fussy")
    return site


def test_a_third_party_devices_op_support_filters_the_space(site, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("OPTIONS", "{device: fussy-npu, kernels: [3, 5], expansions: [3, 6]}"))
    out = nasflow_cli(site, "validate", str(spec))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # 5 layers of fir/ir x k3/k5 x e3/e6 (+ skip on layers 2 and 4); kept: ir_k3_e3 everywhere,
    # ir_k3_e6 where a layer is fed 16 channels or more (layers 2, 3, 4), and the skips.
    assert "  device 'fussy-npu' filter (keep: supported): 10 of 42 candidate blocks kept over 5 layers" in lines
    assert "  dropped fir_k3_e3, fir_k3_e6, fir_k5_e3, fir_k5_e6 in all 5 layers (unsupported): no dense kxk convolutions on this NPU" in lines
    assert "  dropped ir_k5_e3, ir_k5_e6 in all 5 layers (slow): kernel 5 is emulated" in lines
    assert "  dropped ir_k3_e6 in layers 0, 1 (slow): expansion 6 of 16 channels spills" in lines

    options = {"device": "fussy-npu", "kernels": [3, 5], "expansions": [3, 6], "keep": ["supported", "slow"]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", None)
    run = subprocess.run([sys.executable, "-c", CHECK_SAMPLES, json.dumps(options)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["type"] == "Fussy" and seen["kinds"] == ["ir", "skip"]
    assert seen["levels"] == ["slow", "supported"]  # slow blocks kept on request, unsupported never

    nothing = tmp_path / "n.yaml"
    nothing.write_text(SPEC.replace("OPTIONS", "{device: fussy-npu, kinds: [fir]}"))
    refused = nasflow_cli(site, "validate", str(nothing))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "the filter for device 'fussy-npu' (keep: supported) leaves layers 0, 1, 3 with no candidate block" in refused.stderr
    assert "no dense kxk convolutions on this NPU" in refused.stderr


# ---------------------------------------------------------------- what the space produces


@pytest.mark.parametrize("options", [{}, dict(WIDE, keep=["supported", "slow"]), dict(WIDE, device_options={"assume_se_mapped": True})],
                         ids=["default", "wide-keep-slow", "wide-se-mapped"])
def test_sampled_architectures_run_on_the_device_and_are_in_the_lut(options):
    space = _space(**options)
    device = space.device
    keys = {op.lut_key for op in space.lut_ops()}
    rng = random.Random(3)
    for _ in range(100):
        genome = space.sample(rng)
        arch = space.to_arch(genome)
        assert space.from_arch(arch) == genome
        found = op_compatibility(arch, assume_se_mapped=device.options.assume_se_mapped)
        assert not [i for i in found if i.severity == "cpu_fallback"], arch  # the whole network maps
        if space.options.keep == ["supported"]:
            assert found == []
        used = {op.lut_key for op in arch_operators(arch, 1, 10, (8, 8), 1)}
        assert used <= keys, used - keys


def test_the_lut_holds_exactly_the_operators_some_genome_executes():
    space = _space(**SMALL, kinds=["fir", "ir"], kernels=[3, 5], expansions=[6.0])
    used = set()
    for genome in itertools.product(*(range(len(d.choices)) for d in space.decisions)):
        used |= {op.lut_key for op in arch_operators(space.to_arch(genome), 1, 10, (8, 8), 1)}
    assert {op.lut_key for op in space.lut_ops() if op.kind != "null"} == used


def test_supernet_form_holds_the_filtered_candidates_at_fixed_shapes():
    space = _space(**WIDE)
    supernet = space.supernet()
    assert [list(layer.candidates) for layer in supernet.layers] == space.choices
    assert [(b.out, b.stride) for b in supernet.skeleton.blocks] == [(8, 1), (8, 1), (16, 2)]
    cheapest = space.to_arch(space.cheapest_genome())
    assert all(block in choices for block, choices in zip(cheapest.blocks, space.choices))


def test_layerwise_chooses_kind_and_activation_per_layer_and_its_models_run():
    import torch

    from nasflow.arch.builder import build_model

    space = LayerwiseSpace(LayerwiseOptions(**SMALL, kinds=["ir", "fir"], kernels=[3], expansions=[3.0],
                                            activations=["relu", "hswish"]), DIGITS)
    assert space.decisions[0].choices == ("ir_k3_e3_c8_s1", "ir_k3_e3_c8_s1_ahswish", "fir_k3_e3_c8_s1",
                                          "fir_k3_e3_c8_s1_ahswish")
    assert space.decisions[1].choices[-1] == "skip_c8"
    model = build_model(space.to_arch((3, 1, 2)), 1, 10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # Defaults are unchanged: ir blocks, ReLU, in the order specs and registries already hold.
    assert LayerwiseSpace().decisions[1].choices[:3] == ("ir_k3_e1_c24_s2", "ir_k3_e3_c24_s2", "ir_k3_e6_c24_s2")
