"""Device backend that times eager PyTorch inference on this machine's CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from nasflow.errors import DeviceError
from nasflow.export import eval_mode
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, Measurement
from nasflow.timing import TimingOptions, measure_with

if TYPE_CHECKING:
    import torch

INPUT_SEED = 0  # latency does not depend on values, but fixed inputs keep runs reproducible


class CPUOptions(TimingOptions):
    """Thread count and batch size on top of the timing stop rule."""

    threads: int = Field(1, ge=1, description="intra-op threads pinned while measuring")
    batch_size: int = Field(1, ge=1, description="batch dimension of the timed input")


@contextlib.contextmanager
def pinned_torch_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then restore the previous value.

    The setting is process-global, so concurrent measurements in one process must be serialised.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def batched_shape(input_shape: tuple[int, ...], batch_size: int) -> tuple[int, ...]:
    """`input_shape` with its leading (batch) dimension replaced by `batch_size`."""
    if len(input_shape) < 1:
        raise DeviceError(f"input shape {tuple(input_shape)} has no batch dimension")
    return (batch_size, *tuple(input_shape)[1:])


class TorchCPU(DeviceBackend):
    """Eager PyTorch on the CPU, under torch.inference_mode, with a pinned thread count."""

    name = "torch-cpu"
    description = "PyTorch eager inference on the local CPU"
    Options = CPUOptions
    artifact_formats = ()

    def fingerprint(self) -> dict[str, Any]:
        import torch

        return base_fingerprint("torch", torch.__version__, self.options.threads)

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        import torch

        opts = self.options
        shape = batched_shape(input_shape, opts.batch_size)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(INPUT_SEED))
        try:
            with pinned_torch_threads(opts.threads), eval_mode(model), torch.inference_mode():
                stats = measure_with(lambda: model(x), opts)
        except Exception as exc:
            raise DeviceError(
                f"torch-cpu: {type(model).__name__} failed on input {shape}: {exc}"
            ) from exc
        return self.make_measurement(
            stats,
            runtime=f"torch {torch.__version__}",
            artifact_format="pytorch",
            threads=opts.threads,
            batch_size=opts.batch_size,
            extra={"input_shape": list(shape)},
        )


@hookimpl
def nasflow_devices():
    return [TorchCPU]
