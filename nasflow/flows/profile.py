"""Profile stage: check every device runs here, fingerprint it, time a reference model, build LUTs."""

from __future__ import annotations

from prefect import flow

from ..arch import BlockShape, block_shapes
from ..errors import DeviceError
from ..progress import reporter
from ..spaces.layerwise import LayerwiseSpace
from .context import RunContext
from .evaluate import make_devices, measure_everywhere, model_for
from .latency import profile_device


def smallest_genome(space: LayerwiseSpace, image_size=32) -> tuple[int, ...]:
    """The cheapest choice per layer, by MACs of the block alone; a fixed reference architecture."""
    # Every layer's input shape is the same whatever the genome (see nasflow.lut.lut_entries).
    shapes = block_shapes(space.to_arch((0,) * space.num_layers), 3, image_size)
    genome = []
    for choices, shape in zip(space.choices, shapes):
        costs = [(b.macs(BlockShape(shape.in_channels, shape.in_size, b.out_size(shape.in_size))), j) for j, b in enumerate(choices)]
        genome.append(min(costs)[1])
    return tuple(genome)


@flow(name="profile", persist_result=False, validate_parameters=False)
def profile_stage(ctx: RunContext) -> list[dict]:
    """Returns one record per device: name, runtime, fingerprint and the reference latency."""
    from ..data import load_dataset

    spec = ctx.spec
    rep = reporter()
    rep.stage_start("profile", len(spec.devices), "probing devices")
    data = load_dataset(spec.dataset)
    space = LayerwiseSpace(spec.space)
    model = model_for(space.to_arch(smallest_genome(space, data.image_size)), spec.dataset)
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
