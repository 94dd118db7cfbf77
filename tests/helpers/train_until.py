"""``python tests/helpers/train_until.py STEP <llama-avsr train arguments>``: run ``llama-avsr train``
and stop dead once the checkpoint of optimiser step STEP is on disk (written and renamed into place):
print ``READY <path>`` on a line of its own on stdout and block until killed.

Tests that kill a training process use it to synchronise on that state instead of on timing: the
process is killed exactly between two steps, however slow the machine is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L

from llama_avsr.training import run


class PauseAfter(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        # checkpoints are saved at the end of the batch that made the step: by the next batch's start
        # the file of `step` is complete and renamed into place
        if trainer.global_step < self.step:
            return
        ckpt_dir = Path(trainer.default_root_dir) / "checkpoints"
        done = sorted(ckpt_dir.glob(f"*step={self.step}.ckpt"))
        if not done:
            raise RuntimeError(f"no checkpoint of step {self.step} in {ckpt_dir}")
        # on a line of its own: the progress bar shares stdout and ends its lines with \r only
        sys.stdout.write(f"\nREADY {done[0]}\n")
        sys.stdout.flush()
        sys.stdin.read()  # blocks until the parent kills us (or goes away: then end here)
        os._exit(3)


def main() -> int:
    step, argv = int(sys.argv[1]), sys.argv[2:]
    original = run.train

    def train(exp, resume=False, overwrite=False, callbacks=()):
        return original(exp, resume, overwrite, [*callbacks, PauseAfter(step)])

    run.train = train
    from llama_avsr.cli import main as cli

    return cli(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
