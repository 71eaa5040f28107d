"""`nasflow arch`: inspecting architecture strings and zoo models from the command line (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nasflow.arch import count_arch_params, count_macs, format_arch, parse_arch, zoo_arch
from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.lut import arch_ops, load_or_build_lut
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.registry import Registry
from nasflow.spaces.layerwise import LayerwiseSpace

from test_cli import assert_clean_error, nasflow

ARCH = "stem_c8_s1_ahswish-fir_k3_e3_c8_s1-ds_k5_c16_s2_aswish-skip_c16-ir_k3_e1_c16_s1_g2-head_f32"


def test_table_shows_the_canonical_string_layers_and_totals():
    result = nasflow("arch", "mobilenet_v2@0.50")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    arch = zoo_arch("mobilenet_v2@0.5")
    assert lines[0] == f"zoo:mobilenet_v2@0.5: {format_arch(arch)}"
    assert lines[1].split() == ["#", "layer", "fields", "output", "params", "MACs"]
    assert lines[3].split() == ["0", "stem", "c16", "s2", "arelu6", "16x112x112", "464", "5419008"]
    assert lines[-3].split()[:3] == ["18", "head", "c1280"]
    assert lines[-1] == (
        f"total: {count_arch_params(arch, 3, 1000):,} params ({count_arch_params(arch, 3, 1000, batchnorm=False):,} "
        f"without BatchNorm), {count_macs(arch, 3, 1000, 224):,} MACs for one 3x224x224 input, 1000 classes"
    )


def test_json_has_top_level_params_macs_and_blocks():
    result = nasflow("arch", ARCH, "--size", "16", "--classes", "10", "--channels", "1", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    arch = parse_arch(ARCH)
    assert data["arch"] == format_arch(arch) and data["name"] is None
    assert data["params"] == count_arch_params(arch, 1, 10)
    assert data["params_without_bn"] == count_arch_params(arch, 1, 10, batchnorm=False)
    assert data["macs"] == count_macs(arch, 1, 10, 16)
    assert [b["kind"] for b in data["blocks"]] == ["stem", "fir", "ds", "skip", "ir", "head"]
    assert data["blocks"][2]["out_shape"] == [16, 8, 8] and data["blocks"][3]["macs"] == 0
    assert (data["input"], data["classes"]) == ([1, 16, 16], 10)


def test_the_command_never_imports_torch():
    code = (
        "import sys; from nasflow.cli import main; "
        "assert main(['arch', 'zoo:mobilenet_v3_large', '--format', 'json']) == 0; "
        "assert 'torch' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["stem_c16_s1-ir_k4_e6_c24_s2-head_c64"], ["bad token 'ir_k4_e6_c24_s2' at position 1: kernel must be odd"]),
        (["resnet50"], ["unknown zoo model 'resnet50'", "mobilenet_v2"]),
        (["zoo:fbnet_c@0.5"], ["no width multiplier"]),
        (["stem_c8_s1-ir_k3_e1_c8_s1_g2-skip_c4-head"], ["'skip_c4' at position 2: skip needs in == out"]),
    ],
)
def test_bad_input_is_one_error_line(args, fragments):
    assert_clean_error(nasflow("arch", *args), *fragments)


@pytest.fixture(scope="module")
def lut_registry(tmp_path_factory):
    """A registry with a torch-cpu LUT measured for a small layer-wise space on 1x8x8 inputs."""
    path = tmp_path_factory.mktemp("lut") / "registry.duckdb"
    space = LayerwiseSpace(LayerwiseOptions(
        stem_channels=8, stages=[{"channels": 8, "layers": 1, "stride": 1}, {"channels": 16, "layers": 2, "stride": 2}],
        kernels=[3], expansions=[1, 3], head_channels=16,
    ))
    device = TorchCPU(TorchCPU.Options(threads=1, min_seconds=0.0, max_seconds=0.05, max_runs=10))
    table, _ = load_or_build_lut(Registry(path), device, space, 1, 10, 8)
    return path, space, table


def test_lut_sum_latency_from_the_registry(lut_registry):
    path, space, table = lut_registry
    arch = space.to_arch((1, 1, 1))
    args = ["arch", format_arch(arch), "--size", "8", "--classes", "10", "--channels", "1",
            "--device", "torch-cpu", "--registry", path]
    data = json.loads(nasflow(*args, "--format", "json").stdout)
    expected = sum(table[key] for key in arch_ops(arch, 1, 10, 8))
    assert data["latency"]["lut_sum_ms"] == pytest.approx(expected)
    assert data["latency"]["device"] == "torch-cpu" and data["latency"]["batch_size"] == 1
    assert [b["lut_ms"] is None for b in data["blocks"]] == [False, False, False, False, False]
    text = nasflow(*args).stdout
    assert f"LUT-sum latency on torch-cpu: {expected:.4g} ms" in text and "LUT ms" in text


def test_lut_latency_errors_say_what_is_missing(lut_registry):
    path, _, _ = lut_registry
    outside = "stem_c8_s1-ir_k5_e6_c8_s1-head_c16"
    assert_clean_error(
        nasflow("arch", outside, "--size", "8", "--classes", "10", "--channels", "1", "--device", "torch-cpu",
                "--registry", path),
        "no latency LUT of device 'torch-cpu'", "ir_k5_e6_c8_s1@8 at 1x8x8x8",
    )
    assert_clean_error(nasflow("arch", outside, "--device", "litert", "--registry", path),
                       "has no latency LUT for device 'litert'")
