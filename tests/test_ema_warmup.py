"""TrainableEMA's warm-up: the decay of update n is min(decay, (1 + n) / (10 + n)), so a short run's average is
not held back by its first weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from yonos.callbacks import TrainableEMA, ema_decay


def test_ema_decay_ramps_up_to_the_configured_decay():
    assert ema_decay(1, 0.99, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay(90, 0.99, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay(10_000, 0.99, warmup=True) == 0.99
    assert ema_decay(1, 0.99, warmup=False) == 0.99


@pytest.mark.parametrize("warmup", [True, False])
def test_the_callbacks_average_follows_the_recursion(warmup: bool):
    """Parameter values 1, 2, ..., 200 through the callback's averaging function, against the recursion written out;
    with warm-up the first value's weight in the 200-step average is far below the 13 % it keeps without."""
    callback = TrainableEMA(decay=0.99, warmup=warmup)
    parameter = nn.Parameter(torch.zeros(1))
    average = AveragedModel(nn.ParameterList([parameter]), use_buffers=False, **callback._kwargs)
    expected = None
    for step in range(1, 201):
        with torch.no_grad():
            parameter.fill_(float(step))
        n = int(average.n_averaged)
        average.update_parameters(nn.ParameterList([parameter]))
        expected = float(step) if expected is None else ema_decay(n, 0.99, warmup) * expected + (1 - ema_decay(n, 0.99, warmup)) * step
    assert float(next(average.module.parameters())) == pytest.approx(expected, rel=1e-5)
    first_weight = 1.0
    for n in range(1, 200):
        first_weight *= ema_decay(n, 0.99, warmup)
    assert (first_weight < 1e-3) if warmup else (first_weight == pytest.approx(0.99**199))
