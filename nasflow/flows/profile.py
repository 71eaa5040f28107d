"""Profile stage: check every device runs here, fingerprint it, time a reference model, build LUTs."""

from __future__ import annotations

from prefect import flow

from ..errors import DeviceError
from ..progress import reporter
from ..spec import space_for_data
from .context import RunContext
from .evaluate import make_devices, measure_everywhere, model_for
from .latency import profile_device


@flow(name="profile", persist_result=False, validate_parameters=False)
def profile_stage(ctx: RunContext) -> list[dict]:
    """Returns one record per device: name, runtime, fingerprint and the reference latency."""
    from ..data import load_dataset

    spec = ctx.spec
    rep = reporter()
    rep.stage_start("profile", len(spec.devices), "probing devices")
    data = load_dataset(spec.dataset)
    space = space_for_data(spec, data)
    model = model_for(space.to_arch(space.cheapest_genome()), spec.dataset)
    records = []
    for name, device in make_devices(spec.devices).items():
        measurements, failures = measure_everywhere({name: device}, model, data.input_shape)
        if failures:
            raise DeviceError(f"device check failed on {name}: {failures[name]}")
        m = measurements[0]
        record = {"device": name, "runtime": m.runtime, "fingerprint": m.fingerprint, "reference_ms": m.stats.median_ms}
        if spec.profile.lut:
            record.update(profile_device(ctx.registry(), spec, device, data, spec.profile.refresh))
        records.append(record)
        lut = f", LUT {record['lut_entries']} ops {'measured' if record['lut_built'] else 'reused'}" if spec.profile.lut else ""
        rep.advance("profile", 1, f"{name}: {m.stats.median_ms:.3f} ms reference ({m.runtime}){lut}")
    rep.stage_end("profile", ", ".join(f"{r['device']} ok" for r in records))
    return records
