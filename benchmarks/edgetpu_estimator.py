"""How well the analytical Edge TPU model (nasflow/edgetpu.py) predicts Coral's published latencies.

For each host setting of Coral's table ("usb3": desktop CPU + USB Accelerator on USB 3.0;
"devboard": Coral Dev Board) this script

1. describes every reference model layer by layer (benchmarks/edgetpu_reference_models.py);
2. fits the free constants by non-negative least squares on *relative* error over the FIT set
   only, both Edge TPU columns at once: the chip's constants (per-operator overhead, utilisation
   of dense convolutions, extra cost of depthwise convolutions) are shared by both hosts, the
   per-inference overhead and link bandwidth are per host; the host CPU throughput (used for CPU
   fallback) is the median MAC rate of the fit set's CPU-only column;
3. checks that the constants stored in ``nasflow.edgetpu.HOSTS`` are the ones the fit gives
   (exit status 1 if they drifted: refit, then copy the printed values into HOSTS);
4. reports, per model, the published and estimated latency and the relative error with the
   stored constants -- FIT models (in-sample) and HOLD-OUT models (never seen by the fit) -- and
   a leave-one-out estimate (refit on all other models) as a second out-of-sample check;
5. writes everything to ``benchmarks/results/edgetpu_estimator.json``.

Published numbers: https://coral.ai/docs/edgetpu/benchmarks/ (Table 1).

Run from the repository root::

    .venv/bin/python benchmarks/edgetpu_estimator.py
    .venv/bin/python benchmarks/edgetpu_estimator.py --out /tmp/edgetpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgetpu_reference_models import (  # noqa: E402
    CPU_COLUMN,
    PUBLISHED,
    REFERENCE_MODELS,
    SOURCE_NOTE,
    SOURCE_URL,
    TABLE_NAMES,
)

import tables  # noqa: E402  (benchmarks/tables.py: the README rendering)
from nasflow import edgetpu  # noqa: E402
from nasflow.edgetpu import HOSTS, HostProfile, Layer, estimate_latency, tpu_seconds_terms  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "edgetpu_estimator.json"

# Chosen before looking at any fit: the long-established models fit, the rest are held out
# (EfficientNet-EdgeTPU tests depthwise + fused convs, DenseNet concat-heavy graphs, VGG19 and
# ResNet-50 V2 parameter streaming).
FIT_SET = (
    "mobilenet_v1_1.0_224",
    "mobilenet_v2_1.0_224",
    "inception_v1_224",
    "resnet50_v1_299",
    "resnet152_v2_299",
    "vgg16_224",
)
HOLDOUT_SET = tuple(name for name in REFERENCE_MODELS if name not in FIT_SET)
HOSTS_FITTED = ("usb3", "devboard")
PUBLISHED_COLUMNS = {
    "usb3": "Desktop CPU + USB Accelerator (USB 3.0) with Edge TPU",
    "devboard": "Dev Board with Edge TPU",
}
DRIFT_TOLERANCE = 0.01  # stored constants may differ from the fit by 1 % (they are rounded)


def _features(layers: list[Layer], host: str) -> tuple[np.ndarray, float]:
    """Row of the joint linear model and the row's fixed (not fitted) part, in seconds.

    Columns: per-operator overhead, 1/u_conv, extra depthwise cost (the chip's, shared by all
    hosts), then per host: per-inference overhead and 1/link bandwidth.
    """
    t = tpu_seconds_terms(layers)
    index = HOSTS_FITTED.index(host)
    per_host = [0.0] * (2 * len(HOSTS_FITTED))
    per_host[index] = 1.0
    per_host[len(HOSTS_FITTED) + index] = t["link_bytes"]
    row = [t["layers"], t["dense_peak_s"] + t["dw_peak_s"], t["dw_peak_s"], *per_host]
    return np.array(row), t["vector_s"]


def _round(value: float, digits: int = 4) -> float:
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def _inverse(x: float, scale: float = 1.0) -> float:
    return _round(1.0 / x / scale) if x > 0 else float("inf")


def fit_hosts(descriptions: dict[str, list[Layer]], fit_set: tuple[str, ...]) -> dict[str, HostProfile]:
    """Joint NNLS fit (relative error) over every host column of `fit_set`.

    The Edge TPU chip is the same in both settings, so the per-operator overhead and the
    utilisations are shared; the per-inference overhead and link bandwidth are per host. The
    CPU fallback rate of a host is the median MAC rate of its CPU-only column over `fit_set`.
    """
    rows, targets, weights = [], [], []
    for name in fit_set:
        for host in HOSTS_FITTED:
            row, fixed = _features(descriptions[name], host)
            published_s = PUBLISHED[name][host] / 1e3
            rows.append(row)
            targets.append(published_s - fixed)
            weights.append(1.0 / published_s)
    a = np.array(rows) * np.array(weights)[:, None]
    b = np.array(targets) * np.array(weights)
    x, _ = nnls(a, b)
    layer_s, c_conv, c_dw_extra = (float(v) for v in x[:3])
    n = len(HOSTS_FITTED)
    profiles = {}
    for index, host in enumerate(HOSTS_FITTED):
        cpu_rates = [
            sum(layer.macs for layer in descriptions[name]) / (PUBLISHED[name][CPU_COLUMN[host]] / 1e3) / 1e9
            for name in fit_set
        ]
        profiles[host] = HostProfile(
            name=host,
            description=HOSTS[host].description,
            invoke_overhead_ms=_round(x[3 + index] * 1e3),
            layer_overhead_us=_round(layer_s * 1e6),
            u_conv=_inverse(c_conv),
            u_dw=_inverse(c_conv + c_dw_extra),
            link_mb_per_s=_inverse(float(x[3 + n + index]), 1e6),
            cpu_gmacs=_round(statistics.median(cpu_rates)),
            cpu_gelems=HOSTS[host].cpu_gelems,
        )
    return profiles


_CONSTANTS = ("invoke_overhead_ms", "layer_overhead_us", "u_conv", "u_dw", "link_mb_per_s", "cpu_gmacs")


def drift(stored: HostProfile, fitted: HostProfile) -> dict[str, tuple[float, float]]:
    out = {}
    for key in _CONSTANTS:
        a, b = getattr(stored, key), getattr(fitted, key)
        if not math.isclose(a, b, rel_tol=DRIFT_TOLERANCE, abs_tol=1e-9):
            out[key] = (a, b)
    return out


def evaluate(descriptions: dict[str, list[Layer]]) -> dict:
    results: dict = {}
    fitted_all = fit_hosts(descriptions, FIT_SET)
    loo_all = {name: fit_hosts(descriptions, tuple(n for n in descriptions if n != name)) for name in descriptions}
    for host in HOSTS_FITTED:
        fitted = fitted_all[host]
        stored = HOSTS[host]
        rows = []
        for name, layers in descriptions.items():
            published = PUBLISHED[name][host]
            est = estimate_latency(layers, stored)
            loo = estimate_latency(layers, loo_all[name][host]).total_ms
            rows.append(
                {
                    "model": name,
                    "table_name": TABLE_NAMES[name],
                    "role": "fit" if name in FIT_SET else "holdout",
                    "published_ms": published,
                    "estimated_ms": round(est.total_ms, 3),
                    "rel_error": round(est.total_ms / published - 1.0, 4),
                    "loo_estimated_ms": round(loo, 3),
                    "loo_rel_error": round(loo / published - 1.0, 4),
                    "gmacs": round(est.macs / 1e9, 4),
                    "params_m": round(est.params / 1e6, 3),
                    "streamed_mb": round(est.streamed_bytes / 1e6, 3),
                    "breakdown_ms": {
                        k: round(getattr(est, k), 4)
                        for k in ("invoke_ms", "link_io_ms", "compute_ms", "layer_overhead_ms", "stream_ms", "cpu_ms")
                    },
                }
            )

        def summary(values: list[float]) -> dict:
            mags = [abs(v) for v in values]
            return {
                "n": len(mags),
                "median_abs_rel_error": round(statistics.median(mags), 4) if mags else None,
                "mean_abs_rel_error": round(statistics.fmean(mags), 4) if mags else None,
                "max_abs_rel_error": round(max(mags), 4) if mags else None,
            }

        results[host] = {
            "setting": stored.description,
            "published_column": PUBLISHED_COLUMNS[host],
            "cpu_column_for_fallback_rate": CPU_COLUMN[host],
            "stored_constants": {k: getattr(stored, k) for k in _CONSTANTS},
            "fitted_constants": {k: getattr(fitted, k) for k in _CONSTANTS},
            "drift": {k: {"stored": a, "fitted": b} for k, (a, b) in drift(stored, fitted).items()},
            "models": rows,
            "summary": {
                "fit": summary([r["rel_error"] for r in rows if r["role"] == "fit"]),
                "holdout": summary([r["rel_error"] for r in rows if r["role"] == "holdout"]),
                "leave_one_out": summary([r["loo_rel_error"] for r in rows]),
            },
        }
    return results


def print_report(results: dict) -> None:
    print(f"Published latencies: {SOURCE_URL}")
    print(f"  ({SOURCE_NOTE})")
    for host, res in results.items():
        print(f"\n[{host}] {res['published_column']}")
        consts = res["stored_constants"]
        print(
            "  constants: invoke {invoke_overhead_ms} ms, per-op {layer_overhead_us} us, u_conv {u_conv}, "
            "u_dw {u_dw}, link {link_mb_per_s} MB/s, CPU fallback {cpu_gmacs} GMAC/s".format(**consts)
        )
        print(f"  {'model':<26} {'role':<8} {'published':>9} {'estimated':>9} {'error':>8} {'LOO est':>9} {'LOO err':>8}")
        for r in res["models"]:
            print(
                f"  {r['table_name']:<26} {r['role']:<8} {r['published_ms']:>9.1f} {r['estimated_ms']:>9.2f} "
                f"{100 * r['rel_error']:>+7.1f}% {r['loo_estimated_ms']:>9.2f} {100 * r['loo_rel_error']:>+7.1f}%"
            )
        for part, s in res["summary"].items():
            print(
                f"  {part:<13} n={s['n']:<2} median |err| {100 * s['median_abs_rel_error']:.1f}%  "
                f"mean {100 * s['mean_abs_rel_error']:.1f}%  max {100 * s['max_abs_rel_error']:.1f}%"
            )
        if res["drift"]:
            print(f"  DRIFT: nasflow.edgetpu.HOSTS[{host!r}] differs from the fit: {res['drift']}")
            print(f"  fitted constants to store: {res['fitted_constants']}")


def markdown(report: dict) -> str:
    """The README's "Edge TPU estimator" block, from a report of this script."""
    fixed, hosts = report["fixed_assumptions"], report["hosts"]
    usb = hosts["usb3"]
    intro = tables.paragraph(
        f"The `edgetpu-model` device is analytical: {2 * fixed['peak_macs_per_s'] / 1e12:.0f} TOPS int8 peak with fitted",
        "utilisation (dense vs depthwise convolutions), a fitted per-operator and per-inference cost,",
        f"{fixed['param_cache_bytes'] / 2**20:.0f} MiB of the {fixed['sram_bytes'] / 2**20:.0f} MiB SRAM for parameters",
        "with streaming of the rest over the host link, and CPU fallback from the first unsupported operator",
        f"(squeeze-excite, hard-swish) onward. Its constants are fitted to {len(report['fit_set'])} models of Coral's",
        f"published table ([Edge TPU performance benchmarks]({report['published_source_url']}), Table 1: int8 TFLite,",
        f"model execution only) and checked on the other {len(report['holdout_set'])}. {usb['setting']}:",
    )
    roles = {"fit": "fit", "holdout": "hold-out"}
    rows = [
        [r["table_name"], roles[r["role"]], f"{r['published_ms']:g}", tables.significant(r["estimated_ms"]),
         tables.signed_percent(r["rel_error"])]
        for r in sorted(usb["models"], key=lambda r: (r["role"] != "fit", r["published_ms"]))
    ]
    summary = {host: res["summary"] for host, res in hosts.items()}

    def errors(host: str) -> str:
        parts = summary[host]
        return ", ".join(tables.percent(parts[k]["median_abs_rel_error"]) for k in ("fit", "holdout", "leave_one_out"))

    worst = sorted((r for r in usb["models"] if r["role"] == "holdout"), key=lambda r: -abs(r["rel_error"]))[:3]
    closing = tables.paragraph(
        f"Median absolute error, fit set, hold-out set and leave-one-out: {errors('usb3')}"
        + (f" (Dev Board column: {errors('devboard')})." if "devboard" in summary else "."),
        "The largest hold-out errors: "
        + ", ".join(f"{r['table_name']} {tables.signed_percent(r['rel_error'])}" for r in worst) + ".",
    )
    return tables.blocks(intro, tables.table(["model", "role", "published ms", "estimated ms", "error"], rows), closing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; this benchmark is always quick")
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        return tables.print_markdown("edgetpu_estimator", markdown, args.out)

    descriptions = {name: build() for name, build in REFERENCE_MODELS.items()}
    results = evaluate(descriptions)
    print_report(results)
    doc = {
        "benchmark": "edgetpu_estimator",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "estimator": f"edgetpu-model {edgetpu.MODEL_VERSION} (analytical)",
        "published_source_url": SOURCE_URL,
        "published_source_note": SOURCE_NOTE,
        "fit_set": list(FIT_SET),
        "holdout_set": list(HOLDOUT_SET),
        "method": (
            "joint non-negative least squares on relative error over both Edge TPU columns of the fit set; "
            "shared by both hosts (same chip): per-operator overhead, 1/u_conv, extra depthwise cost "
            "(so u_dw <= u_conv); per host: per-inference overhead, 1/link bandwidth; "
            "CPU fallback rate = median MAC rate of the fit set's CPU-only column; leave-one-out refits on "
            "all other reference models"
        ),
        "known_limitations": [
            "DenseNet (concatenation-heavy, 58 concats of growing tensors) is underestimated about 3x: "
            "concatenation/requantisation cost beyond a vector copy is not modelled",
            "EfficientNet-EdgeTPU (fused 3x3 expansion convs at 112x112 and 56x56) is underestimated by "
            "20-50%: utilisation does not depend on layer shape or activation size in this model",
            "leave-one-out errors of +40-70% on MobileNet v2 and Inception v1 show that the small-model "
            "constants (per-op overhead vs depthwise utilisation) are weakly determined by six models",
            "CPU-fallback costs (elementwise rate, per-op dispatch) are assumptions, not fitted: no published "
            "model in the table falls back",
        ],
        "fixed_assumptions": {
            "peak_macs_per_s": edgetpu.PEAK_MACS_PER_S,
            "vector_elems_per_s": edgetpu.VECTOR_ELEMS_PER_S,
            "sram_bytes": edgetpu.SRAM_BYTES,
            "param_cache_bytes": edgetpu.PARAM_CACHE_BYTES,
            "cpu_gelems": HOSTS["usb3"].cpu_gelems,
            "cpu_op_overhead_us": HOSTS["usb3"].cpu_op_overhead_us,
        },
        "hosts": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    drifted = [host for host, res in results.items() if res["drift"]]
    if drifted:
        print(f"error: stored constants drifted from the fit for {drifted}; update nasflow.edgetpu.HOSTS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
