"""cosine_scheduler: warmup endpoints, cosine midpoint and last step, length, errors;
adjust_learning_rate with lr_scale and fix_lr groups."""

import math

import numpy as np
import pytest
import torch

from optimizers.cosine_decay_warmup import adjust_learning_rate, cosine_scheduler

BASE, FINAL, WARMUP_LR = 0.4, 0.004, 0.01
EPOCHS, STEPS, WARMUP = 10, 6, 2
W, T = WARMUP * STEPS, (EPOCHS - WARMUP) * STEPS  # warmup steps, cosine steps


@pytest.fixture
def schedule():
    return cosine_scheduler(BASE, FINAL, EPOCHS, STEPS, WARMUP, WARMUP_LR)


def test_length_is_epochs_times_steps(schedule):
    assert len(schedule) == EPOCHS * STEPS
    assert len(cosine_scheduler(BASE, FINAL, 3, 7)) == 21


def test_warmup_is_linear_from_warmup_lr(schedule):
    assert schedule[0] == pytest.approx(WARMUP_LR)
    expected = WARMUP_LR + (BASE - WARMUP_LR) * np.arange(W) / W
    np.testing.assert_allclose(schedule[:W], expected)


def test_base_at_warmup_end_and_midpoint_of_cosine(schedule):
    assert schedule[W] == pytest.approx(BASE)
    assert T % 2 == 0  # so the middle is a step: cos(pi/2) = 0
    assert schedule[W + T // 2] == pytest.approx((BASE + FINAL) / 2)


def test_last_step_is_one_step_before_final(schedule):
    expected = FINAL + 0.5 * (BASE - FINAL) * (1 + math.cos(math.pi * (T - 1) / T))
    assert schedule[-1] == pytest.approx(expected)
    assert FINAL < schedule[-1] < FINAL + (BASE - FINAL) * 0.01


def test_cosine_part_decreases(schedule):
    assert np.all(np.diff(schedule[W:]) < 0)
    assert np.all(np.diff(schedule[:W]) > 0)


def test_no_warmup_starts_at_base():
    schedule = cosine_scheduler(BASE, FINAL, EPOCHS, STEPS, warmup_epochs=0, start_warmup_value=1.0)
    assert schedule[0] == pytest.approx(BASE)
    assert len(schedule) == EPOCHS * STEPS


def test_warmup_as_long_as_the_run_is_all_warmup():
    schedule = cosine_scheduler(BASE, FINAL, 2, STEPS, warmup_epochs=2)
    np.testing.assert_allclose(schedule, BASE * np.arange(2 * STEPS) / (2 * STEPS))


def test_warmup_longer_than_the_run_raises():
    with pytest.raises(ValueError, match="warmup_epochs"):
        cosine_scheduler(BASE, FINAL, 2, STEPS, warmup_epochs=3)


def test_adjust_learning_rate_honours_lr_scale_and_fix_lr():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD(
        [
            {"params": [params[0]]},
            {"params": [params[1]], "lr_scale": 0.5},
            {"params": [params[2]], "fix_lr": True},
        ],
        lr=0.3,
    )
    adjust_learning_rate(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05, 0.3]
