"""nasflow device plugin: time models as frozen TorchScript on the CPU."""

from pydantic import Field

from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend
from nasflow.timing import TimingOptions, measure_with


class Options(TimingOptions):  # warm-up, stop rule and contention handling, plus our own option
    threads: int = Field(1, ge=1)


class TorchScriptCPU(DeviceBackend):
    name = "torchscript-cpu"
    description = "frozen TorchScript on the CPU"
    Options = Options

    def fingerprint(self):
        import torch  # imported where it is used: `nasflow plugins` and `validate` stay fast

        return base_fingerprint("torchscript", torch.__version__, self.options.threads)

    def measure_model(self, model, input_shape):
        import torch

        example = torch.randn(*input_shape)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.options.threads)
        try:
            with torch.no_grad():
                frozen = torch.jit.freeze(torch.jit.trace(model.eval(), example))
                stats = measure_with(lambda: frozen(example), self.options)
        finally:
            torch.set_num_threads(previous)
        return self.make_measurement(
            stats,
            runtime=f"torchscript {torch.__version__}",
            artifact_format="pytorch",
            threads=self.options.threads,
            batch_size=input_shape[0],
        )


@hookimpl
def nasflow_devices():
    return [TorchScriptCPU]
