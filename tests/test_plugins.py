"""Plugin discovery through real distributions (dist-info entry points on sys.path), as pip leaves them."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nasflow import hookspecs
from nasflow.plugins import BUILTIN_MODULES, get_plugins

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "nasflow-torchscript-device" / "nasflow_torchscript" / "__init__.py"


def install_dist(site: Path, dist: str, version: str, module: str, source: str, entry_name: str) -> None:
    """Lay out a distribution the way pip installs one: a module plus its .dist-info with entry points."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[nasflow]\n{entry_name} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_dist(site, "nasflow-torchscript", "0.1.0", "nasflow_torchscript", EXAMPLE_PLUGIN.read_text(), "torchscript")
    install_dist(site, "broken-dist", "9.9", "broken_plugin", "raise ImportError('libfoo.so not found')\n", "broken")
    return site


def nasflow_cli(site: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env_extra}  # this checkout's nasflow
    if "NASFLOW_DISABLE_PLUGIN_AUTOLOAD" not in env_extra:
        env.pop("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "nasflow.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_third_party_plugin_is_listed_and_broken_one_named(site):
    result = nasflow_cli(site, "plugins")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if "torchscript-cpu" in l)
    assert line.split()[:4] == ["device", "torchscript-cpu", "nasflow-torchscript", "0.1.0"]
    assert "broken" in result.stderr and "broken-dist" in result.stderr and "libfoo.so not found" in result.stderr
    assert "Traceback" not in result.stderr
    builtin = [l.split()[:3] for l in result.stdout.splitlines() if l.startswith(("search", "device", "compressor"))]
    assert ["search", "evolution", "nasflow"] in builtin and ["compressor", "morphnet", "nasflow"] in builtin


def test_third_party_device_usable_in_a_spec(site, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\ndevices:\n  - name: torchscript-cpu\n    options: {threads: 1}\n")
    ok = nasflow_cli(site, "validate", str(spec))
    assert ok.returncode == 0, ok.stderr
    spec.write_text("name: t\ndevices:\n  - name: torchscript-cpu\n    options: {threads: 0}\n")
    bad = nasflow_cli(site, "validate", str(spec))
    assert bad.returncode == 2 and "threads" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", ["validate", "plugins"])
def test_a_broken_plugin_is_named_once(site, tmp_path, command):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\ndevices:\n  - name: torchscript-cpu\n")
    result = nasflow_cli(site, *([command, str(spec)] if command == "validate" else [command]))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: nasflow plugin 'broken'"), result.stderr


def test_a_warning_raised_twice_is_shown_once(site):
    """Discovery run again (reset_plugins) warns from the same place again; the CLI shows it once."""
    code = (
        "import sys, warnings\n"
        "from nasflow import cli\n"
        "from nasflow.plugins import get_plugins, reset_plugins\n"
        "warnings.showwarning = cli._show_warning\n"
        "get_plugins(); reset_plugins(); warnings.resetwarnings(); get_plugins()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    env.pop("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("failed to load and was skipped") == 1, result.stderr


def test_the_example_plugin_loads_without_importing_torch(site):
    """As the guide says: heavy runtimes are imported where they are used, so listing plugins stays fast."""
    code = "import sys\nfrom nasflow.plugins import get_plugins\nget_plugins().get('device', 'torchscript-cpu')\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    env.pop("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_plugin_guide_prose_and_example_use_the_same_helpers():
    readme = (ROOT / "README.md").read_text()
    guide = readme[readme.index("## Writing a plugin"):readme.index("```python", readme.index("## Writing a plugin"))]
    example = EXAMPLE_PLUGIN.read_text()
    for helper in ("measure_with", "TimingOptions", "make_measurement"):
        assert helper in guide, f"the guide's prose does not mention {helper}"
        assert helper in example, f"the guide recommends {helper} but its example does not use it"
    for bypass in ("measure_callable", "Measurement("):
        assert bypass not in example, f"the example uses {bypass}, which the guide's prose does not recommend"
    assert "import torch\n" not in example.split("class ")[0], "the example imports torch at module level"


def test_autoload_can_be_disabled(site):
    result = nasflow_cli(site, "plugins", NASFLOW_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0
    assert "torchscript-cpu" not in result.stdout and "broken" not in result.stderr


def test_example_plugin_measures_for_real(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    from nasflow_torchscript import TorchScriptCPU

    from nasflow.spaces.layerwise import LayerwiseOptions
    from nasflow.space import LayerwiseSpace, build_model

    space = LayerwiseSpace(LayerwiseOptions())
    model = build_model(space.to_arch(space.sample(__import__("random").Random(0))), 1, 10)
    m = TorchScriptCPU().measure_model(model, (1, 1, 8, 8))
    assert m.source == "measured" and m.stats.median_ms > 0 and m.fingerprint["threads"] == 1


def test_readme_quotes_the_example_plugin_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert EXAMPLE_PLUGIN.read_text().strip() in readme


def test_every_hookspec_is_documented_and_implemented_by_a_builtin():
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("nasflow_")]
    assert sorted(specs) == sorted(hookspecs.KIND_HOOKS.values())
    plugins = get_plugins()
    for name in specs:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        implementers = [impl.plugin_name for impl in getattr(plugins.manager.hook, name).get_hookimpls()]
        assert any(i in BUILTIN_MODULES for i in implementers), f"{name} has no built-in implementation"


def test_unknown_plugin_error_lists_choices():
    from nasflow.errors import PluginError

    with pytest.raises(PluginError, match="'evolutoin' is not a registered search strategy; available: darts, evolution, fbnet, mnasnet, nsga2, optuna, proxyless, random"):
        get_plugins().get("search", "evolutoin")


def test_readme_registry_schema_matches_the_code():
    from nasflow.registry import schema_markdown

    assert schema_markdown().strip() in (ROOT / "README.md").read_text()


FLAKY_DEVICE = '''
"""A device that cannot run a 5x5 kernel in the last block, as a real runtime may refuse an operator."""
from nasflow.errors import DeviceError
from nasflow.hookspecs import hookimpl
from nasflow.plugins.devices.torch_cpu import TorchCPU


class PickyDevice(TorchCPU):
    name = "picky-cpu"

    def measure_model(self, model, input_shape):
        if model.arch.blocks[-1].kernel == 5:
            raise DeviceError("5x5 depthwise is not supported by this runtime")
        return super().measure_model(model, input_shape)


@hookimpl
def nasflow_devices():
    return [PickyDevice]
'''


def test_device_failing_on_some_candidates_marks_them_failed_and_the_run_goes_on(tmp_path):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_spec_text

    from nasflow.registry import Registry

    site = tmp_path / "site"
    install_dist(site, "picky-device", "1.0", "picky_device", FLAKY_DEVICE, "picky")
    text = tiny_spec_text(tmp_path, name="picky", train=False, morph=False, deploy=False, profile=False)
    text = text.replace("  - {name: onnxruntime-cpu", "  - {name: picky-cpu").replace("budget: 6", "budget: 8")
    # a candidate fails only when the device that drives the objective has no number (another
    # device's failure is that device's measurement row alone: see test_resume.py)
    assert "objectives: {reward: mnasnet, target_ms: 0.2}" in text
    text = text.replace("objectives: {reward: mnasnet, target_ms: 0.2}", "objectives: {reward: mnasnet, target_ms: 0.2, device: picky-cpu}")
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    result = nasflow_cli(site, "run", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    registry = Registry(tmp_path / "registry.duckdb")
    _, rows = registry.query("SELECT arch, status, error FROM candidates")
    failed = [r for r in rows if r[1] == "failed"]
    ok = [r for r in rows if r[1] == "ok"]
    assert failed and ok, rows
    def last_is_k5(arch):
        return arch.split("-")[-2].startswith("ir_k5_")

    assert all(last_is_k5(arch) and "picky-cpu: 5x5 depthwise is not supported" in error for arch, _, error in failed)
    assert all(not last_is_k5(arch) for arch, _, _ in ok)
    # what the other device measured is kept, and the failing device's attempt is a row of its own
    _, kept = registry.query(
        "SELECT m.device, m.median_ms IS NULL, m.extra->>'error' FROM measurements m JOIN candidates c "
        "USING (candidate_id) WHERE c.status = 'failed'"
    )
    assert sorted(d for d, _, _ in kept) == sorted(["picky-cpu", "torch-cpu"] * len(failed))
    assert all(missing == (device == "picky-cpu") for device, missing, _ in kept)
    assert all("5x5 depthwise" in error for device, _, error in kept if device == "picky-cpu")
