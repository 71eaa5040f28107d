"""How the search stage times a batch of candidates: one `prepare` for the batch, then each model in passes."""

import random

import pytest

from nasflow.errors import DeviceError
from nasflow.flows.latency import time_candidates
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.progress import Reporter, using_reporter
from nasflow.space import arch_hash
from nasflow.spaces import make_space
from nasflow.spec import parse_spec

from conftest import tiny_spec_text

FAST = dict(threads=1, min_seconds=0.0, max_seconds=0.05, max_runs=10)
INPUT = (1, 1, 8, 8)  # digits


class Recording(TorchCPU):
    """torch-cpu that logs prepare/measure calls; `fail_prepare` makes prepare raise."""

    def __init__(self, options, events, fail_prepare=False):
        super().__init__(options)
        self.events, self.fail_prepare = events, fail_prepare

    def prepare(self, jobs, progress=None):
        self.events.append(("prepare", len(jobs)))
        if self.fail_prepare:
            raise DeviceError("converter crashed")

    def measure_model(self, model, input_shape):
        self.events.append(("measure", tuple(input_shape)))
        return super().measure_model(model, input_shape)


class Messages(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


@pytest.fixture
def batch(tmp_path):
    spec = parse_spec(tiny_spec_text(tmp_path), check_plugins=False)
    space = make_space(spec.space)
    rng = random.Random(0)
    archs = list({arch_hash(a): a for a in (space.to_arch(space.sample(rng)) for _ in range(4))}.values())
    return spec, archs


def test_measured_batch_is_prepared_once_before_any_timing(batch):
    spec, archs = batch
    events = []
    timed = time_candidates(archs, {"torch-cpu": Recording(TorchCPU.Options(**FAST), events)}, None, spec, INPUT)
    assert events[0] == ("prepare", len(archs))
    # each model measured in the device's passes (interleaved with other devices; here the only one)
    assert events[1:] == [("measure", INPUT)] * (len(archs) * TorchCPU.Options(**FAST).passes)
    assert set(timed) == {arch_hash(a) for a in archs}
    assert all(not failures and len(ms) == 1 for ms, failures in timed.values())


def test_a_failing_prepare_is_reported_and_every_candidate_still_measured(batch):
    spec, archs = batch
    events, rep = [], Messages()
    device = Recording(TorchCPU.Options(**FAST), events, fail_prepare=True)
    with using_reporter(rep):
        timed = time_candidates(archs, {"torch-cpu": device}, None, spec, INPUT)
    assert any("preparing" in line and "converter crashed" in line for line in rep.lines)
    assert all(not failures and ms[0].source == "measured" for ms, failures in timed.values())
