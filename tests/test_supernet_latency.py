"""The supernet latency table: a constant plus one entry per layer reproduces the device's predictor."""

from __future__ import annotations

import random

import pytest

from nasflow.lut import build_lut
from nasflow.predictors import LutSumPredictor, calibrate
from nasflow.space import LayerwiseSpace
from nasflow.supernet_latency import latency_table

from test_predictors import GEOMETRY, SPACE, FakeDevice, table_of


@pytest.fixture(scope="module")
def space():
    return LayerwiseSpace(SPACE)


@pytest.fixture(scope="module")
def table(space):
    return table_of(build_lut(FakeDevice(), space, *GEOMETRY))


def _check(space, predictor, source):
    supernet = space.supernet()
    lat = latency_table("fake", source, predictor, supernet, GEOMETRY[0], GEOMETRY[2])
    assert lat.source == source and len(lat.layers) == len(supernet.layers)
    rng = random.Random(0)
    for _ in range(20):
        genome = space.sample(rng)
        choice = [genome[layer.decision] for layer in supernet.layers]
        assert lat.total(choice) == pytest.approx(predictor.predict(space.to_arch(genome)), rel=1e-9, abs=1e-12)


def test_lut_sum_table_matches_the_predictor(space, table):
    _check(space, LutSumPredictor(table, *GEOMETRY), "lut")


def test_calibrated_table_matches_the_predictor(space, table):
    predictor, _, _ = calibrate(FakeDevice(), space, table, *GEOMETRY, n=4)
    _check(space, predictor, "predicted")
