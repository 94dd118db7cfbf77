"""The training objective of a multi-task / multi-rate model (Omni-AVSR, Llama-MTSK).

One model serves ASR, VSR and AVSR (``model.tasks``) at several compression rates per stream
(``compression.ratios``), with one shared LLM. Each training batch is turned into a *plan*: a list of
(rows, task, rates, weight) passes through the model, and the loss of the step is

    sum over tasks t of  w_t · sum over rate combinations c of  w_c · (cross entropy summed over the
    transcript tokens of t's rows at rates c),

with the weights of the task passes of a row summing to 1 and those of its rate combinations too. So
each utterance's transcript tokens count once, as for a single-task model: the loss stays the token
mean that ``training/module.py`` averages over ranks and accumulation windows, and the learning rate
of a single-task recipe carries over.

- ``train.task_sampling``: ``batch`` — one task per batch, drawn with ``train.task_weights``;
  ``utterance`` — a task per utterance (the batch is run once per drawn task, on its rows: tasks with
  their own LoRA adapters cannot share one LLM pass); ``all`` — every task on every utterance, weighted
  (Omni-AVSR's recipe).
- ``train.rate_sampling``: ``all`` — every combination of the task's stream rates (Llama-MTSK); ``sample``
  — one combination drawn per pass (Omni-AVSR's cheaper variant: one LLM pass instead of
  ∏ |rates|).

Draws come from a generator seeded by (seed, epoch, step, rank), so a resumed run draws what the
interrupted one would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from llama_avsr.data.batch import Batch
from llama_avsr.models.avsr import AVSRModel, AVSROutput


@dataclass(frozen=True)
class Pass:
    """One run of the model: ``rows`` of the batch (``None``: all) for ``task`` at ``rates``, its summed
    loss counted with ``weight``."""

    rows: tuple[int, ...] | None
    task: str
    rates: dict[str, int]
    weight: float


def task_weights(model: AVSRModel, weights: dict[str, float] | None) -> dict[str, float]:
    """Normalised task weights (equal by default)."""
    tasks = model.cfg.task_names
    w = {t: float((weights or {}).get(t, 1.0)) for t in tasks}
    total = sum(w.values())
    return {t: v / total for t, v in w.items()}


def plan(
    model: AVSRModel,
    n_rows: int,
    task_sampling: str,
    rate_sampling: str,
    weights: dict[str, float] | None,
    rng: random.Random,
) -> list[Pass]:
    """The passes of one batch (module docstring)."""
    tw = task_weights(model, weights)
    tasks = list(tw)
    if task_sampling == "all":
        groups = [(None, t, tw[t]) for t in tasks]
    elif task_sampling == "batch":
        groups = [(None, rng.choices(tasks, [tw[t] for t in tasks])[0], 1.0)]
    else:  # utterance
        drawn = rng.choices(tasks, [tw[t] for t in tasks], k=n_rows)
        groups = [(tuple(i for i, d in enumerate(drawn) if d == t), t, 1.0) for t in tasks if t in drawn]
    out: list[Pass] = []
    for rows, task, w in groups:
        combos = model.cfg.rate_combinations(task)
        if rate_sampling == "sample":
            combos = [rng.choice(combos)]
        out += [Pass(rows, task, c, w / len(combos)) for c in combos]
    return out


def objective(model: AVSRModel, batch: Batch, passes: list[Pass]) -> AVSROutput:
    """The weighted sum of the passes' losses as one :class:`AVSROutput` (``lm_loss_sum`` over the
    batch's transcript tokens, ``n_tokens`` = those tokens, counted once)."""
    lm_sum = None
    sink = None
    n_tokens = None
    for p in passes:
        sub = batch if p.rows is None else batch.select(list(p.rows))
        out = model(sub, task=p.task, rates=p.rates)
        lm_sum = out.lm_loss_sum * p.weight if lm_sum is None else lm_sum + out.lm_loss_sum * p.weight
        sink = out.sink_loss * p.weight if sink is None else sink + out.sink_loss * p.weight
    covered = torch.zeros(len(batch))
    for p in passes:
        covered[list(p.rows) if p.rows is not None else slice(None)] += p.weight
    # every row's passes weigh 1 in all: its tokens count once
    if not torch.allclose(covered, torch.ones_like(covered), atol=1e-5):
        raise RuntimeError(f"training plan weighs rows {covered.tolist()}, expected 1 each")
    n_tokens = (batch.target_ids != -100).sum()
    lm_loss = lm_sum / n_tokens.clamp(min=1)
    # the sink loss is a per-pass mean: averaged over passes as the tasks are
    sink = sink / sum(p.weight for p in passes) * (1.0 if len(passes) else 0.0)
    return AVSROutput(lm_loss + sink, lm_loss, sink, lm_sum, n_tokens)


def step_rng(seed: int, epoch: int, step: int, rank: int) -> random.Random:
    """The generator of one training step's draws (reproducible across resumes)."""
    return random.Random(f"{seed}/{epoch}/{step}/{rank}")
