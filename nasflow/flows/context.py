"""The plain values every stage receives: which run, which spec, where things are stored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from ..spec import Spec


@dataclass(frozen=True)
class RunContext:
    run_id: str
    spec: Spec

    @property
    def registry_path(self) -> Path:
        return self.spec.registry.path

    @property
    def work_dir(self) -> Path:
        return self.spec.execution.work_dir / self.run_id

    def registry(self) -> Registry:
        return Registry(self.registry_path)
