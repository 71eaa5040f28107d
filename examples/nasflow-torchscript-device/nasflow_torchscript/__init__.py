"""nasflow device plugin: time models as frozen TorchScript on the CPU."""

import torch
from pydantic import BaseModel, ConfigDict, Field

from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, Measurement
from nasflow.timing import measure_callable


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    threads: int = Field(1, ge=1)


class TorchScriptCPU(DeviceBackend):
    name = "torchscript-cpu"
    description = "frozen TorchScript on the CPU"
    Options = Options

    def fingerprint(self):
        return base_fingerprint("torchscript", torch.__version__, self.options.threads)

    def measure_model(self, model, input_shape):
        example = torch.randn(*input_shape)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.options.threads)
        try:
            with torch.no_grad():
                frozen = torch.jit.freeze(torch.jit.trace(model.eval(), example))
                stats = measure_callable(lambda: frozen(example))
        finally:
            torch.set_num_threads(previous)
        return Measurement(
            device=self.name,
            runtime=f"torchscript {torch.__version__}",
            artifact_format="pytorch",
            source="measured",
            stats=stats,
            threads=self.options.threads,
            batch_size=input_shape[0],
            fingerprint=self.fingerprint(),
        )


@hookimpl
def nasflow_devices():
    return [TorchScriptCPU]
