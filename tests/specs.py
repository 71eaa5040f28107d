"""Tiny specs that exercise the real pipeline in seconds (used by tests and benchmarks)."""

from pathlib import Path


def tiny_spec_text(
    tmp_path: Path, name: str = "tiny", runner: str = "thread", objectives: str = "{reward: mnasnet, target_ms: 0.2}", **stages: bool
) -> str:
    """A complete spec small enough for tests: 6 candidates, 1-epoch proxies, 2-epoch training."""
    enabled = {s: stages.get(s, True) for s in ("profile", "search", "train", "morph", "deploy")}
    return f"""\
name: {name}
dataset: {{name: digits, val_split: 0.25, cache_dir: {tmp_path / 'cache'}}}
space:
  name: layerwise
  options:
    stem_channels: 8
    stages:
      - {{channels: 8, layers: 1, stride: 1}}
      - {{channels: 16, layers: 2, stride: 2}}
    kernels: [3, 5]
    expansions: [1, 3]
    head_channels: 32
devices:
  - {{name: torch-cpu, options: {{threads: 1, min_seconds: 0, max_seconds: 0.3, max_runs: 50}}}}
  - {{name: onnxruntime-cpu, options: {{threads: 1, min_seconds: 0, max_seconds: 0.3, max_runs: 50}}}}
objectives: {objectives}
profile: {{enabled: {str(enabled['profile']).lower()}}}
search:
  enabled: {str(enabled['search']).lower()}
  strategy: evolution
  budget: 6
  batch_size: 3
  options: {{population_size: 3, sample_size: 2}}
  proxy: {{epochs: 1, subset: 0.5}}
train: {{enabled: {str(enabled['train']).lower()}, top_k: 1, config: {{epochs: 2}}}}
morph: {{enabled: {str(enabled['morph']).lower()}, top_k: 1, options: {{reg_epochs: 1, finetune_epochs: 1}}}}
deploy: {{enabled: {str(enabled['deploy']).lower()}, out_dir: {tmp_path / 'deploy'}}}
registry: {{path: {tmp_path / 'registry.duckdb'}}}
execution: {{runner: {runner}, workers: 2, work_dir: {tmp_path / 'runs'}}}
"""
