"""The deployment folder `<deploy.out_dir>/<run id>/`: the artifacts, `manifest.json` and `MODEL_CARD.md`.

Both files are built from registry rows (the run, its candidates, its artifacts and their
measurements) plus what only the deploy stage knows (the dataset's normalisation and class names,
each file's tensors read back from the file). A user needs nothing else to run a model: the
manifest says how to turn an image into the input tensor and the output into a class name.
Torch is never imported. The schema is documented in the README ("The deployment folder").
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from nasflow.export.common import write_atomically

MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
SCHEMA_VERSION = 1


def _latency(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per device, the newest latency number of one file or model, with its source and fingerprint."""
    out: dict[str, dict[str, Any]] = {}
    for m in rows:
        if m["metric"] != "latency":
            continue
        entry = {
            "median_ms": m["median_ms"], "p90_ms": m["p90_ms"], "source": m["source"], "runtime": m["runtime"],
            "artifact_format": m["artifact_format"], "threads": m["threads"], "batch_size": m["batch_size"],
            "fingerprint_hash": m["fingerprint_hash"], "fingerprint": m["fingerprint"],
        }
        if m["median_ms"] is None:
            entry["error"] = (m.get("extra") or {}).get("error")
        out[m["device"]] = entry
    return out


def _model(candidate: dict, live: dict[str, dict]) -> dict[str, Any]:
    """A deployed candidate: its architecture, size and accuracies (with their sources)."""
    return {
        "candidate_id": candidate["candidate_id"], "stage": candidate["stage"], "arch": candidate["arch"],
        "arch_hash": candidate["arch_hash"], "parent_id": candidate["parent_id"],
        "params": candidate["params"], "macs": candidate["macs"],
        "val_accuracy": {"value": candidate["accuracy"], "source": candidate["accuracy_source"], "split": "val"},
        "test_accuracy": {"value": candidate["test_accuracy"], "source": "full", "split": "test"},
        "train_epochs": candidate["train_epochs"], "score": candidate["score"],
        "latency": {device: {"median_ms": m["median_ms"], "source": m["source"], "runtime": m["runtime"],
                             "fingerprint_hash": m["fingerprint_hash"]} for device, m in live.items()},
    }


QUANTIZATION_FIELDS = ("activation_quantization", "tensor_dtypes")


def _artifact(row: dict, described: dict | None, measured: list[dict]) -> dict[str, Any]:
    """One file of the folder, as the manifest describes it (`described`: the exporter's `describe`)."""
    quantized = row["max_accuracy_drop"] is not None
    tensors = described or {}
    entry: dict[str, Any] = {
        "file": Path(row["path"]).name, "artifact_id": row["artifact_id"], "candidate_id": row["candidate_id"],
        "format": row["format"], "sha256": row["sha256"], "size_bytes": row["size_bytes"],
        "inputs": tensors.get("inputs"), "outputs": tensors.get("outputs"),
        "quantization": {**(row["options"] or {}), **{k: v for k, v in tensors.items() if k in QUANTIZATION_FIELDS}}
        if quantized else None,
        "accuracy": {"value": row["accuracy"], "source": "artifact", "split": "test",
                     "float32_reference": row["reference_accuracy"], "top1_agreement": row["top1_agreement"]},
        "verification": {
            "verified": row["verified"], "max_abs_err": row["max_abs_err"], "cosine_diff": row["cosine_diff"],
            "tolerance": row["tolerance"], "max_accuracy_drop": row["max_accuracy_drop"], "failure": row["failure"],
        },
        "latency": _latency(measured),
    }
    entry.update({k: v for k, v in tensors.items() if k not in ("inputs", "outputs", *QUANTIZATION_FIELDS)})
    return entry


def build_manifest(
    spec: Any, run: dict, candidates: list[dict], artifacts: list[dict], measurements: list[dict],
    live_latency: dict[str, dict[str, dict]], dataset: dict[str, Any], described: dict[str, dict | None],
) -> dict[str, Any]:
    """The manifest of `artifacts` (rows of the current deploy settings).

    `live_latency`: per candidate id, its live model's latency rows per device (selection's
    `with_latency`); `dataset`: name, class_names, mean, std, input_shape (C, H, W), test_images;
    `described`: per artifact id, the exporter's `describe(path)` (tensors, and format-specific
    fields such as edgetpu's `compiled`).
    """
    by_id = {c["candidate_id"]: c for c in candidates}
    by_artifact: dict[str, list[dict]] = {}
    for m in measurements:
        if m["artifact_id"] is not None:
            by_artifact.setdefault(m["artifact_id"], []).append(m)
    deployed_ids = list(dict.fromkeys(a["candidate_id"] for a in artifacts))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run["run_id"], "name": run["name"], "nasflow_version": run["nasflow_version"],
        "written_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "dataset": {"name": dataset["name"], "num_classes": len(dataset["class_names"]),
                    "class_names": list(dataset["class_names"]), "test_images": dataset["test_images"]},
        "preprocessing": {
            "layout": "NCHW", "input_shape": [None, *dataset["input_shape"]], "dtype": "float32",
            "scale": "pixels in 0..1 (8-bit images divided by 255)",
            "mean": list(dataset["mean"]), "std": list(dataset["std"]),
            "formula": "x = (p - mean[c]) / std[c], p the pixel in 0..1 (an 8-bit pixel divided by 255); "
                       "an integer input tensor then takes round(x / scale) + zero_point (its `quantization`)",
            "output": "logits, one per class in `dataset.class_names` order; the class is the largest",
        },
        "search": {"space": spec.space.name, "strategy": spec.search.strategy, "budget": spec.search.budget,
                   "objective_device": spec.objective_device},
        "models": [_model(by_id[c], live_latency.get(c, {})) for c in deployed_ids if c in by_id],
        "artifacts": [
            _artifact(a, described.get(a["artifact_id"]), by_artifact.get(a["artifact_id"], []))
            for a in artifacts
        ],
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _ms(entry: dict | None) -> str:
    if not entry:
        return "-"
    if entry.get("median_ms") is None:
        return f"failed ({entry.get('error') or 'no number'})"
    return f"{entry['median_ms']:.3f} ms ({entry['source']})"


def model_card(manifest: dict[str, Any], spec: Any, counts: dict[str, int]) -> str:
    """MODEL_CARD.md: what the models are, the data, how they were found and trained, metrics, limits."""
    data = manifest["dataset"]
    pre = manifest["preprocessing"]
    lines = [
        f"# Model card: {manifest['name']} ({manifest['run_id']})", "",
        f"Image classifiers for **{data['name']}** ({data['num_classes']} classes: "
        f"{', '.join(data['class_names'][:20])}{' ...' if data['num_classes'] > 20 else ''}), found by nasflow "
        f"{manifest['nasflow_version']} and exported as {', '.join(sorted({a['format'] for a in manifest['artifacts']}))}. "
        f"`{MANIFEST}` beside this file lists every file with its hash, tensors and numbers.", "",
        "## Data", "",
        f"- Dataset `{data['name']}`; selection used the validation split only; the test split "
        f"({data['test_images']} images) was used for the numbers below and nothing else.",
        f"- Input: {pre['layout']} float32 of shape {pre['input_shape'][1:]} (batch first), pixels in 0..1, "
        f"normalised per channel with mean {[round(m, 4) for m in pre['mean']]} and std {[round(s, 4) for s in pre['std']]}.",
        "",
        "## How the models were found and trained", "",
        f"- Search space `{spec.space.name}`, strategy `{spec.search.strategy}`, budget {spec.search.budget}: "
        f"{counts.get('search', 0)} candidates evaluated"
        + (f" with proxy training ({spec.search.proxy.epochs} epochs on {spec.search.proxy.subset:g} of the training split)"
           if hasattr(spec.search, "proxy") else "") + ".",
        f"- Objective: `{spec.objectives.reward}` reward on device `{manifest['search']['objective_device']}`.",
        f"- The top {spec.train.top_k} trained in full for {spec.train.config.epochs} epochs ({counts.get('train', 0)} models)"
        + (f"; {counts.get('morph', 0)} compressed models (morph stage)" if counts.get("morph") else "") + ".",
        "",
        "## Models", "",
        "| model | stage | params | MACs | val accuracy | test accuracy (PyTorch) | latency of the live model |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in manifest["models"]:
        lat = "; ".join(f"{d}: {_ms(e)}" for d, e in m["latency"].items()) or "-"
        lines.append(
            f"| `{m['arch_hash'][:12]}` | {m['stage']} | {m['params']:,} | {m['macs']:,} | "
            f"{_pct(m['val_accuracy']['value'])} ({m['val_accuracy']['source']}) | {_pct(m['test_accuracy']['value'])} | {lat} |"
        )
    lines += ["", "Architecture strings:", ""]
    lines += [f"- `{m['arch_hash'][:12]}`: `{m['arch']}`" for m in manifest["models"]]
    lines += [
        "", "## Files and their metrics per device", "",
        "| file | format | size | test accuracy (the file) | float32 model | top-1 agreement | verified | latency per device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in manifest["artifacts"]:
        acc, ver = a["accuracy"], a["verification"]
        verdict = "yes" if ver["verified"] else f"no: {ver['failure']}"
        if a.get("compiled") is False:
            verdict += " (not compiled for the Edge TPU: int8 model plus operator report)"
        lat = "; ".join(f"{d}: {_ms(e)}" for d, e in a["latency"].items()) or "not timed"
        lines.append(
            f"| `{a['file']}` | {a['format']} | {a['size_bytes'] / 1024:.1f} KiB | {_pct(acc['value'])} | "
            f"{_pct(acc['float32_reference'])} | {_pct(acc['top1_agreement'])} | {verdict} | {lat} |"
        )
    lines += [
        "", "Latency sources: `measured` (timed on the device), `lut` (sum of per-operator timings), "
        "`predicted` (calibrated model), `estimated` (analytical); each number's device fingerprint is in the manifest.",
        "", "## Limitations", "",
        f"- Trained and evaluated on `{data['name']}` only; accuracy on other data is unknown.",
        "- Latencies hold for the device fingerprints recorded in the manifest (CPU, runtime versions, threads); "
        "other hardware or runtime versions give other numbers.",
        "- int8 files were calibrated on training images; inputs far outside the training distribution may "
        "lose more accuracy than measured on the test split.",
        "- Batch 1 latency; models were selected on validation accuracy, so the test numbers are the unbiased ones.",
        "",
    ]
    return "\n".join(lines)


def write_folder(folder: Path, manifest: dict[str, Any], card: str) -> tuple[Path, Path]:
    """Write manifest.json and MODEL_CARD.md into `folder` atomically (the user's umask)."""
    manifest_path, card_path = folder / MANIFEST, folder / MODEL_CARD
    write_atomically(manifest_path, (json.dumps(manifest, indent=2, default=str) + "\n").encode(), "the manifest")
    write_atomically(card_path, card.encode(), "the model card")
    return manifest_path, card_path
