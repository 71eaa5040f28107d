"""Device backend that *estimates* Coral Edge TPU latency analytically (no hardware needed).

Every measurement it returns has ``source="estimated"`` and a runtime of
``"edgetpu-model <version> (analytical)"``: nothing is timed. The model, its assumptions, the
operator-compatibility table it applies (hard-swish and, by default, squeeze-excite fall back to
the CPU from that layer on) and the sources of its constants are documented in
``nasflow/edgetpu.py``; its error against Coral's published latencies, including models held out
of the fit, is in ``benchmarks/results/edgetpu_estimator.json``.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from nasflow import __version__
from nasflow.edgetpu import HOSTS, MODEL_VERSION, PARAM_CACHE_BYTES, block_support, estimate_latency, layers_from_module
from nasflow.errors import DeviceError
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement, OpSupport, PluginOptions

if TYPE_CHECKING:
    import torch

    from nasflow.arch import Block

RUNTIME = f"edgetpu-model {MODEL_VERSION} (analytical)"


class EdgeTPUModelOptions(PluginOptions):
    """Which Coral setting to model, and the two assumptions a user may want to change."""

    host: Literal["usb3", "devboard"] = Field(
        "usb3", description="usb3: USB Accelerator on a desktop over USB 3.0; devboard: Coral Dev Board"
    )
    batch_size: int = Field(1, ge=1, description="images per call (the Edge TPU runs them one after another)")
    assume_se_mapped: bool = Field(
        False, description="assume the compiler maps squeeze-excite's broadcast multiply (default: CPU fallback)"
    )
    param_cache_mib: float = Field(
        PARAM_CACHE_BYTES / 2**20, gt=0, le=8, description="on-chip memory available for caching parameters, MiB"
    )


class EdgeTPUModel(DeviceBackend):
    """Analytical Coral Edge TPU latency: MAC rate per operator type, parameter streaming, CPU fallback."""

    name = "edgetpu-model"
    description = "Coral Edge TPU latency estimated analytically (source 'estimated'; no hardware needed)"
    Options = EdgeTPUModelOptions
    artifact_formats = ()

    def fingerprint(self) -> dict[str, Any]:
        opts = self.options
        profile = HOSTS[opts.host]
        return {
            "device_model": "Coral Edge TPU (analytical model)",
            "host": opts.host,
            "host_description": profile.description,
            "runtime": "edgetpu-model",
            "runtime_version": MODEL_VERSION,
            "constants": {
                "invoke_overhead_ms": profile.invoke_overhead_ms,
                "layer_overhead_us": profile.layer_overhead_us,
                "u_conv": profile.u_conv,
                "u_dw": profile.u_dw,
                "link_mb_per_s": profile.link_mb_per_s,
                "cpu_gmacs": profile.cpu_gmacs,
                "cpu_gelems": profile.cpu_gelems,
                "cpu_op_overhead_us": profile.cpu_op_overhead_us,
            },
            "assume_se_mapped": opts.assume_se_mapped,
            "param_cache_mib": opts.param_cache_mib,
            "batch_size": opts.batch_size,
            "threads": 1,
            "python": platform.python_version(),
            "nasflow_version": __version__,
        }

    def op_support(self, block: "Block", in_channels: int) -> OpSupport:
        """The estimator's operator mapping (`nasflow.edgetpu.block_support`), under this device's
        `assume_se_mapped`: the same rule that sends its estimates to the CPU."""
        return block_support(block, in_channels, assume_se_mapped=self.options.assume_se_mapped)

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        opts = self.options
        if len(tuple(input_shape)) < 2:
            raise DeviceError(f"edgetpu-model: input shape {tuple(input_shape)} has no batch and feature dimensions")
        try:
            layers = layers_from_module(model, input_shape)
        except Exception as exc:
            raise DeviceError(
                f"edgetpu-model: cannot describe {type(model).__name__} on input {tuple(input_shape)}: {exc}"
            ) from exc
        if not layers:
            raise DeviceError(f"edgetpu-model: {type(model).__name__} has no operators the estimator recognises")
        estimate = estimate_latency(
            layers,
            opts.host,
            assume_se_mapped=opts.assume_se_mapped,
            param_cache_bytes=int(opts.param_cache_mib * 2**20),
            batch_size=opts.batch_size,
        )
        ms = estimate.total_ms
        # Nothing was timed: no runs, no spread, no confidence interval (inf is stored as NULL).
        stats = LatencyStats(
            median_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, min_ms=ms, runs=0, warmup=0, rel_ci=float("inf")
        )
        shape = [opts.batch_size, *tuple(input_shape)[1:]]
        return self.make_measurement(
            stats,
            runtime=RUNTIME,
            artifact_format="pytorch",
            source="estimated",
            threads=1,
            batch_size=opts.batch_size,
            extra={
                "input_shape": shape,
                "estimate": estimate.as_dict(),
            },
        )


@hookimpl
def nasflow_devices():
    return [EdgeTPUModel]
