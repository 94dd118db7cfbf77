"""Learning-rate schedules: warm-up + cosine by steps, and by the time budget."""

from __future__ import annotations

import pytest

from llama_avsr.training.config import TrainConfig
from llama_avsr.training.module import TrainingClock, cosine, warmup_cosine


def test_warmup_then_cosine_by_steps():
    f = [warmup_cosine(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_cosine_clamps_progress():
    assert cosine(-1, 0.2) == 1.0 and cosine(2, 0.2) == pytest.approx(0.2)


def test_training_clock_continues_after_resume(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("llama_avsr.training.module.time.monotonic", lambda: now[0])
    clock = TrainingClock()
    clock.before = 30.0  # restored from a checkpoint
    assert clock.seconds() == 30.0
    now[0] += 12.5
    assert clock.seconds() == 42.5


def test_time_schedule_needs_a_budget():
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(schedule="time")
    with pytest.raises(ValueError, match="'steps' or 'time'"):
        TrainConfig(schedule="epochs")
    assert TrainConfig(schedule="time", max_minutes=5).schedule == "time"
