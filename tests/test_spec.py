"""Spec validation: unknown keys, YAML line numbers, plugin names and options checked up front."""

import textwrap

import pytest

from nasflow.errors import SpecError
from nasflow.spec import load_spec, parse_spec

GOOD = """\
name: demo
devices:
  - name: torch-cpu
    options: {threads: 1}
search:
  strategy: evolution
  budget: 4
  options: {population_size: 4, sample_size: 2}
objectives:
  reward: mnasnet
  target_ms: 1.0
"""


def test_good_spec_validates_with_defaults():
    spec = parse_spec(GOOD)
    assert spec.search.strategy == "evolution"
    assert spec.objective_device == "torch-cpu"
    assert spec.run_id().startswith("demo-")


def test_run_id_ignores_comments_and_formatting():
    assert parse_spec(GOOD).run_id() == parse_spec("# comment\n" + GOOD.replace("budget: 4", "budget:   4")).run_id()
    # a larger budget continues the same run (see test_resume.py for what is part of the run id)
    assert parse_spec(GOOD).run_id() == parse_spec(GOOD.replace("budget: 4", "budget: 5")).run_id()
    assert parse_spec(GOOD).run_id() != parse_spec(GOOD.replace("budget: 4", "budget: 4\n  batch_size: 2")).run_id()


def test_unknown_key_is_named_with_its_line():
    text = GOOD.replace("  budget: 4\n", "  budget: 4\n  budgett: 5\n")
    with pytest.raises(SpecError) as err:
        parse_spec(text, "s.yaml")
    assert "s.yaml:8: search.budgett: unknown key" in str(err.value)


def test_unknown_top_level_key():
    with pytest.raises(SpecError, match=r"s.yaml:1: colour: unknown key"):
        parse_spec("colour: red\n" + GOOD, "s.yaml")


def test_misspelled_strategy_lists_choices():
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD.replace("strategy: evolution", "strategy: evolutoin"), "s.yaml")
    message = str(err.value)
    assert "s.yaml:6: search.strategy:" in message
    assert "'evolutoin' is not a registered search strategy; available: darts, evolution, fbnet, mnasnet, nsga2, optuna, proxyless, random" in message


def test_plugin_options_validated_by_the_plugin_model():
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD.replace("sample_size: 2", "sample_size: 9"), "s.yaml")
    assert "search.options" in str(err.value) and "sample_size must not exceed population_size" in str(err.value)
    with pytest.raises(SpecError, match="threads"):
        parse_spec(GOOD.replace("threads: 1", "threads: 0"), "s.yaml")
    with pytest.raises(SpecError, match=r"devices\[0\]\.options.*invalid options for device backend 'torch-cpu': colour"):
        parse_spec(GOOD.replace("threads: 1", "colour: 1"), "s.yaml")


def test_unknown_device_and_compressor():
    with pytest.raises(SpecError, match=r"s.yaml:3: devices\[0\]\.name: 'tpu9' is not a registered device backend"):
        parse_spec(GOOD.replace("name: torch-cpu", "name: tpu9"), "s.yaml")
    with pytest.raises(SpecError, match=r"morph\.compressor: 'zip' is not a registered compressor; available: morphnet"):
        parse_spec(GOOD + "morph: {compressor: zip}\n", "s.yaml")


def test_type_errors_and_missing_required_fields():
    with pytest.raises(SpecError, match=r"s.yaml:7: search.budget: Input should be a valid integer"):
        parse_spec(GOOD.replace("budget: 4", "budget: many"), "s.yaml")
    with pytest.raises(SpecError, match=r"name: required key is missing"):
        parse_spec(GOOD.replace("name: demo\n", ""), "s.yaml")
    with pytest.raises(SpecError, match="target_ms is required"):
        parse_spec(GOOD.replace("  target_ms: 1.0\n", ""), "s.yaml")


def test_malformed_yaml_points_at_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: demo\nsearch:\n  budget: [1, 2\n")
    with pytest.raises(SpecError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_spec(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec("- a\n- b\n")
    with pytest.raises(SpecError, match="empty"):
        parse_spec("")


def test_missing_dataset_path_is_caught_at_validation(tmp_path):
    text = GOOD + textwrap.dedent(f"""\
        dataset:
          name: image_folder
          path: {tmp_path / 'missing.tar.gz'}
        """)
    with pytest.raises(SpecError, match=r"dataset.path: '.*missing.tar.gz' does not exist"):
        parse_spec(text, "s.yaml")


def test_objective_device_must_be_listed_and_devices_unique():
    with pytest.raises(SpecError, match="objectives.device 'gpu' is not in devices"):
        parse_spec(GOOD.replace("reward: mnasnet", "device: gpu\n  reward: mnasnet"))
    dup = GOOD.replace("devices:\n", "devices:\n  - name: torch-cpu\n")
    with pytest.raises(SpecError, match="torch-cpu listed more than once"):
        parse_spec(dup)


def test_example_specs_validate():
    from pathlib import Path

    root = Path(__file__).parent.parent
    examples = sorted((root / "examples").glob("*.yaml"))
    assert len(examples) >= 2, "example specs missing"
    for path in examples:
        spec = load_spec(path, check_plugins=False).spec
        if spec.dataset.path and not spec.dataset.path.exists():
            continue  # shared data absent here; the plugin/path checks below would rightly fail
        load_spec(path)


def test_cifar_example_validates_when_the_shared_data_is_present(monkeypatch):
    from pathlib import Path

    root = Path(__file__).parent.parent
    if not (root.parent / "shared" / "data" / "cifar10-jpeg.tar.gz").exists():
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz is absent")
    monkeypatch.chdir(root)  # the example's dataset path is relative to the project root
    assert load_spec(root / "examples" / "cifar10.yaml").spec.dataset.name == "image_folder"


def test_unusable_device_is_refused_at_validation_with_how_to_fix():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here, so the cuda device is usable")
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD.replace("name: torch-cpu", "name: cuda").replace("threads: 1", "batch_size: 1"), "s.yaml")
    message = str(err.value)
    assert "s.yaml:3: devices[0].name: device 'cuda' is not usable here" in message
    assert "CUDA" in message and "install" in message


def test_tflite_deploy_needs_the_litert_packages_and_says_how_to_get_them(monkeypatch):
    from nasflow.export.formats import TFLiteExporter

    text = GOOD + "deploy: {formats: [onnx, tflite]}\n"
    monkeypatch.setattr(TFLiteExporter, "unavailable_reason", classmethod(lambda cls, options=None: "no LiteRT here: pip install x"))
    with pytest.raises(SpecError) as err:
        parse_spec(text, "s.yaml")
    assert "s.yaml:12: deploy.formats: tflite cannot be written here: no LiteRT here: pip install x" in str(err.value)
    # Deploy off, or onnx only: nothing to check.
    parse_spec(GOOD + "deploy: {enabled: false, formats: [tflite]}\n", "s.yaml")
    parse_spec(GOOD + "deploy: {formats: [onnx]}\n", "s.yaml")
    monkeypatch.undo()


def test_a_bad_deploy_format_lists_the_registered_exporters():
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD + "deploy: {formats: [onnx, tflite_int8]}\n", "s.yaml")
    message = str(err.value)
    assert "s.yaml:12: deploy.formats: 'tflite_int8' is not a registered exporter; available: " in message
    assert "onnx, onnx-int8, tflite, tflite-int8" in message


def test_deploy_options_are_validated_by_their_exporter():
    parse_spec(GOOD + "deploy: {formats: [onnx-int8], options: {onnx-int8: {calibration_images: 64}}}\n", "s.yaml")
    with pytest.raises(SpecError, match=r"deploy.options.onnx-int8: invalid options for exporter 'onnx-int8': calibration_images"):
        parse_spec(GOOD + "deploy: {formats: [onnx-int8], options: {onnx-int8: {calibration_images: 0}}}\n", "s.yaml")
    with pytest.raises(SpecError, match="deploy.options has options for tflite, which deploy.formats does not list"):
        parse_spec(GOOD + "deploy: {formats: [onnx], options: {tflite: {}}}\n", "s.yaml")
    with pytest.raises(SpecError, match="deploy.formats lists onnx more than once"):
        parse_spec(GOOD + "deploy: {formats: [onnx, onnx]}\n", "s.yaml")


# ------------------------------------------------------------------------------ strict YAML


@pytest.mark.parametrize(
    "text, line, first, path",
    [
        ("name: demo\nsearch:\n  budget: 4\n  batch_size: 2\n  budget: 8\n", 5, "line 3", "search.budget"),
        ("name: demo\nname: other\n", 2, "line 1", "name"),
        ("name: demo\ndevices:\n  - name: torch-cpu\n    options:\n      threads: 1\n      threads: 2\n", 6, "line 5",
         "devices[0].options.threads"),
        ("name: demo\ntrain: {config: {epochs: 1, epochs: 2}}\n", 2, "column 18 of this line", "train.config.epochs"),
    ],
)
def test_duplicate_keys_are_errors_naming_both_places(text, line, first, path):
    with pytest.raises(SpecError) as err:
        parse_spec(text, "s.yaml")
    assert str(err.value) == f"s.yaml:{line}: {path}: duplicate key (also at {first}); give each key once"


def test_yaml_merge_keys_may_still_be_overridden():
    text = "name: demo\ntrain:\n  config: &base {epochs: 3, lr: 0.1}\nmorph: {enabled: false}\n"
    assert parse_spec(text).train.config.epochs == 3
    merged = "name: demo\nsearch:\n  proxy: {<<: {epochs: 3, subset: 0.5}, epochs: 1}\n"
    proxy = parse_spec(merged).search.proxy
    assert (proxy.epochs, proxy.subset) == (1, 0.5)


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (("budget: 4", "budget: true"), 7, "search.budget: Input should be a valid integer, got true"),
        (("budget: 4", "budget: 4.0"), 7, "search.budget: Input should be a valid integer, got 4.0"),
        (("budget: 4", "budget: 2.5"), 7, "search.budget: Input should be a valid integer, got 2.5"),
        (("budget: 4", 'budget: "3"'), 7, "search.budget: Input should be a valid integer, got '3'"),
        (("budget: 4", "budget: 4\n  enabled: 1"), 8, "search.enabled: Input should be a valid boolean, got 1"),
        (("budget: 4", "budget: 4\n  enabled: 'yes'"), 8, "search.enabled: Input should be a valid boolean, got 'yes'"),
        (("target_ms: 1.0", "target_ms: true"), 11, "objectives.target_ms: Input should be a valid number, got true"),
    ],
)
def test_numbers_and_booleans_are_not_coerced(edit, line, message):
    old, new = edit
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD.replace(old, new), "s.yaml")
    assert f"s.yaml:{line}: {message}" in str(err.value)


def test_a_boolean_is_not_a_literal_number():
    with pytest.raises(SpecError, match=r"s.yaml:14: space.options: .*'layerwise': stem_stride: Input should be 1 or 2, not true"):
        parse_spec(GOOD + "space:\n  name: layerwise\n  options: {stem_stride: true}\n", "s.yaml")
    with pytest.raises(SpecError, match=r"space.options: .*kernels: Input should be 3, 5 or 7, not true"):
        parse_spec(GOOD + "space: {options: {kernels: [3, true]}}\n", "s.yaml")


def test_floats_take_integers_and_paths_take_strings():
    from pathlib import Path

    text = GOOD + textwrap.dedent("""\
        train: {config: {lr: 1, momentum: 0}}
        dataset: {val_split: 0.5, cache_dir: here/cache}
        registry: {path: results/reg.duckdb}
        deploy: {out_dir: out}
        execution: {work_dir: work}
        """)
    spec = parse_spec(text.replace("target_ms: 1.0", "target_ms: 2"))
    assert spec.train.config.lr == 1.0 and isinstance(spec.train.config.lr, float)
    assert spec.objectives.target_ms == 2.0 and isinstance(spec.objectives.target_ms, float)
    assert spec.dataset.cache_dir == Path("here/cache") and spec.registry.path == Path("results/reg.duckdb")
    assert spec.deploy.out_dir == Path("out") and spec.execution.work_dir == Path("work")


def test_plugin_options_are_as_strict_as_spec_keys():
    from pathlib import Path

    from nasflow.errors import PluginError
    from nasflow.plugin_api import PluginOptions
    from nasflow.plugins import get_plugins

    plugins = get_plugins()
    for info in plugins.list():
        assert issubclass(info.cls.Options, PluginOptions), f"{info.kind} {info.name}: Options is not a PluginOptions"
    for bad in ({"threads": True}, {"threads": 2.5}, {"threads": "2"}):
        with pytest.raises(PluginError, match="threads: Input should be a valid integer"):
            plugins.options("device", "torch-cpu", bad)
    assert plugins.options("device", "torch-cpu", {"min_seconds": 0}).min_seconds == 0.0
    assert plugins.options("device", "litert", {"cache_dir": "tfl"}).cache_dir == Path("tfl")
    with pytest.raises(PluginError, match="population_size: Input should be a valid integer, got true"):
        plugins.options("search", "evolution", {"population_size": True})
    with pytest.raises(PluginError, match="reg_epochs: Input should be a valid integer, got 1.5"):
        plugins.options("compressor", "morphnet", {"reg_epochs": 1.5})
    with pytest.raises(SpecError, match=r"s.yaml:4: devices\[0\].options: .*threads: Input should be a valid integer, got true"):
        parse_spec(GOOD.replace("threads: 1", "threads: true"), "s.yaml")


# ------------------------------------------------------------------------------ objectives


def test_leaving_out_objectives_equals_an_empty_mapping():
    from nasflow.config import ObjectivesConfig

    omitted = parse_spec("name: demo\n")
    empty = parse_spec("name: demo\nobjectives: {}\n")
    assert omitted.objectives == empty.objectives == ObjectivesConfig()
    assert omitted.run_id() == empty.run_id()
    assert omitted.objectives.reward == "accuracy"


def test_mnasnet_settings_without_the_mnasnet_reward_are_refused():
    with pytest.raises(SpecError, match=r"s.yaml:2: objectives: objectives.target_ms applies only to reward 'mnasnet'.*\(the default\)"):
        parse_spec("name: demo\nobjectives: {target_ms: 2}\n", "s.yaml")
    with pytest.raises(SpecError, match=r"objectives.alpha and objectives.beta apply only to reward 'mnasnet'"):
        parse_spec("name: demo\nobjectives: {reward: accuracy, alpha: 0, beta: -1}\n", "s.yaml")
    with pytest.raises(SpecError, match="objectives.target_ms is required when objectives.reward is 'mnasnet'"):
        parse_spec("name: demo\nobjectives: {reward: mnasnet}\n", "s.yaml")
    capped = parse_spec("name: demo\nobjectives: {max_latency_ms: 3}\n").objectives
    assert capped.reward == "accuracy" and capped.max_latency_ms == 3.0


def test_readme_states_the_default_reward():
    from pathlib import Path

    from nasflow.config import ObjectivesConfig

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `objectives.reward` |"))
    default = ObjectivesConfig.model_fields["reward"].default
    assert row.split("|")[2].strip() == f"`{default}`", row
    section = next(line for line in readme.splitlines() if line.startswith("| **`objectives`** |"))
    assert f"`{default}`" in section, section


def test_command_line_options_leave_unwritten_keys_unset():
    """`nasflow profile` sets profile keys through with_options; a spec that never wrote an
    objectives key must not be read as if it had written every default (reward 'accuracy' would
    then refuse the defaulted target_ms, alpha and beta)."""
    from nasflow.spec import with_options

    spec = parse_spec("name: t\n", "s.yaml", check_plugins=False)
    changed = with_options(spec, {("profile", "lut"): (None, True), ("profile", "passes"): ("--passes", 2)})
    assert changed.profile.lut and changed.profile.passes == 2
    assert changed.objectives.reward == "accuracy" and changed.run_id() == spec.run_id()  # profile keys do not count
    with pytest.raises(SpecError, match="--passes 0: profile.passes"):
        with_options(spec, {("profile", "passes"): ("--passes", 0)})
