"""Tests for nasflow.train: accuracy on digits, determinism, subset, regulariser, options, evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nasflow.config import DatasetConfig, TrainConfig
from nasflow.data import load_dataset
from nasflow.train import TrainResult, _augment, evaluate, train_model


class TinyCNN(nn.Module):
    """Small enough to train on digits in well under a second per epoch."""

    def __init__(self, in_channels: int = 1, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # keeps some layout; global pooling learns digits slowly
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4, classes)
        self.seen = 0  # training samples forwarded, to check the subset option

    def forward(self, x):
        if self.training:
            self.seen += len(x)
        return self.head(self.features(x))


def _model(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    # torch's spinning worker threads make them up to 100x slower; restore afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetConfig())


def test_reaches_good_accuracy(digits):
    epochs_seen = []
    model = _model()
    result = train_model(
        model, digits, TrainConfig(epochs=4, lr=0.1), progress=lambda e, total, loss: epochs_seen.append((e, total, loss))
    )
    assert isinstance(result, TrainResult)
    assert result.val_accuracy > 0.8
    assert result.epochs == 4 and result.seconds > 0 and math.isfinite(result.train_loss)
    assert [e for e, _, _ in epochs_seen] == list(range(1, 5)) and epochs_seen[0][1] == 4
    assert epochs_seen[-1][2] < epochs_seen[0][2]
    assert evaluate(model, digits) == pytest.approx((result.val_accuracy, result.val_loss))


def test_deterministic_and_global_rng_untouched(digits):
    cfg = TrainConfig(epochs=2, augment=True, seed=5)
    before = torch.random.get_rng_state()
    a = train_model(_model(), digits, cfg, subset=0.3)
    torch.random.set_rng_state(before)
    b = train_model(_model(), digits, cfg, subset=0.3)
    assert a.val_loss == b.val_loss and a.train_loss == b.train_loss
    c = train_model(_model(), digits, TrainConfig(epochs=2, augment=True, seed=6), subset=0.3)
    assert c.val_loss != a.val_loss


def test_global_rng_state_restored(digits):
    state = torch.random.get_rng_state()
    train_model(_model(), digits, TrainConfig(epochs=1))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_subset_and_epochs_override(digits):
    full, part = _model(), _model()
    train_model(full, digits, TrainConfig(epochs=5, batch_size=32), epochs=1)
    result = train_model(part, digits, TrainConfig(epochs=5, batch_size=32), epochs=1, subset=0.25)
    assert result.epochs == 1
    assert full.seen >= len(digits.train_y) - 32
    assert part.seen <= 0.26 * len(digits.train_y)
    with pytest.raises(ValueError, match="subset"):
        train_model(_model(), digits, TrainConfig(), subset=0)


def test_extra_loss_is_applied(digits):
    cfg = TrainConfig(epochs=1, weight_decay=0.0)

    def weight_norm(m: nn.Module) -> float:
        return sum(float(p.detach().pow(2).sum()) for p in m.parameters() if p.ndim > 1)

    plain, penalised = _model(), _model()
    train_model(plain, digits, cfg)
    calls = []

    def l2(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return 0.05 * sum(p.pow(2).sum() for p in m.parameters() if p.ndim > 1)

    train_model(penalised, digits, cfg, extra_loss=l2)
    assert calls and weight_norm(penalised) < 0.8 * weight_norm(plain)


def test_label_smoothing_changes_loss(digits):
    plain = train_model(_model(), digits, TrainConfig(epochs=1))
    smooth = train_model(_model(), digits, TrainConfig(epochs=1, label_smoothing=0.2))
    assert smooth.train_loss > plain.train_loss


def test_adamw_constant_schedule_runs(digits):
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=3e-3, weight_decay=0.01, schedule="constant")
    result = train_model(_model(), digits, cfg)
    assert result.val_accuracy > 0.5


def test_sgd_without_momentum_runs(digits):
    result = train_model(_model(), digits, TrainConfig(epochs=1, momentum=0.0))
    assert 0.0 <= result.val_accuracy <= 1.0


def test_divergence_stops_early(digits):
    result = train_model(_model(), digits, TrainConfig(epochs=4, lr=1e6, schedule="constant"))
    assert result.epochs < 4 and not math.isfinite(result.train_loss)


def test_evaluate_restores_mode(digits):
    model = _model()
    model.train()
    acc, loss = evaluate(model, digits, batch_size=100)
    assert model.training and 0.0 <= acc <= 1.0 and loss > 0
    model.eval()
    evaluate(model, digits)
    assert not model.training


def test_train_model_restores_mode(digits):
    model = _model().eval()
    train_model(model, digits, TrainConfig(epochs=1))
    assert not model.training


def test_augment_keeps_shape_and_content():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    out = _augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # A crop of a padded, maybe flipped image: every non-padding value comes from the same sample.
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())
        assert len(values) >= 3 * 4 * 4
