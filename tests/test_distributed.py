"""Distributed training on 2 CPU processes (gloo), launched by Lightning from ``llama-avsr train``:
DDP gives the loss and the averaged model of one process with the same global batch; FSDP's sharded
checkpoints consolidate into a model directory that loads on one process; runs of 2 processes resume on 1.

Every run trains the tiny AVSR configuration for 3 optimiser steps of a global batch of 2 frame-budget
batches: one process accumulating 2 batches, or 2 processes with 1 batch each. The runs are made
deterministic so that they can be compared: no augmentation, and AV-HuBERT frozen (eval mode: no
dropout) with LoRA adapters, so both encoders, their adapters, the projectors and the LLM's LoRA are in
the model and only the adapters and projectors train. The batches hold 1–2 utterances with different
numbers of transcript tokens, so averaging per-rank means instead of the global token mean would show.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llama_avsr.cli import main
from llama_avsr.synth import tts

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"
#: a hang guard, not a speed check: a run stopped after this many seconds is stuck, however loaded the
#: machine (a tiny 2-process run takes a minute or two on an idle 2-core machine)
RUN_TIMEOUT = 1800

pytestmark = [
    pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed"),
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch.distributed with the gloo backend is not available",
    ),
]

#: what every run shares (the module docstring says why)
RUN = [
    "data.max_frames=160",  # 8 batches of 1–2 utterances: 4 steps an epoch at 2 batches per step
    "data.train_augment=[]",
    "model.encoders.avhubert.frozen=true",
    "model.encoders.avhubert.options={lora: true}",
    "train.max_steps=3",
    "train.checkpoint_every_steps=1",
    "train.average_last=2",
    "train.gradient_clip_val=0.1",
    "train.val_every_steps=2",
    "train.loggers=[csv]",
]
ONE_PROCESS = ["train.devices=1", "train.accumulate_grad_batches=2"]
TWO_PROCESSES = ["train.devices=2", "train.accumulate_grad_batches=1"]
#: runs of different world sizes sum in different orders; Adam then amplifies the rounding a little
WEIGHTS_TOL = {"rtol": 1e-4, "atol": 1e-5}
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}


@dataclass
class Run:
    out: Path
    log: str  # stdout + stderr of every process of the run

    @property
    def model(self) -> Path:
        return self.out / "model"

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def metrics(self, name: str) -> dict[int, float]:
        """A logged metric by the global step it was logged at, from the CSV log (rank 0's): the loss
        of optimiser step k is logged at k − 1 (before its update)."""
        with open(self.out / "logs" / "csv" / "metrics.csv") as f:
            return {int(r["step"]): float(r[name]) for r in csv.DictReader(f) if r.get(name)}

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.model / "trainable.safetensors"))


def train(corpus: Path, out: Path, *overrides: str, resume: bool = False) -> Run:
    """``python -m llama_avsr.cli train`` in a subprocess, so that Lightning's launcher can start the
    other ranks by running the same command again."""
    noise = next((corpus / "synth" / "train").rglob("*.wav"))
    cmd = [
        sys.executable,
        "-m",
        "llama_avsr.cli",
        "-v",  # info: "model written to" (and Lightning's lines, each once)
        "train",
        "--config",
        str(TINY),
        *(["--resume"] if resume else []),
        f"train.out_dir={out}",
        f"data.root={corpus}",
        "data.train_csv=synth_train.csv",
        "data.val_csv=synth_val.csv",
        "data.test_csv=synth_test.csv",
        f"data.noise_file={noise}",
        *RUN,
        *overrides,
    ]
    # a session of its own, so that a hung run is stopped with the ranks Lightning started
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        log, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"training did not finish in {RUN_TIMEOUT} s:\n{log[-5000:]}")
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{log[-5000:]}"
    assert "Traceback" not in log, log[-5000:]  # a failing non-zero rank does not set the exit code
    return Run(out, log)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **WEIGHTS_TOL, msg=lambda m, k=k: f"{k}: {m}")


def assert_same_losses(run: Run, reference: Run) -> None:
    train_loss, ref_loss = run.metrics("train/loss"), reference.metrics("train/loss")
    assert set(train_loss) == set(ref_loss) == {0, 1, 2}
    for step in ref_loss:
        torch.testing.assert_close(train_loss[step], ref_loss[step], **LOSS_TOL)
    # validation after step 2, its loss summed over the ranks' batches before dividing by the tokens
    assert run.metrics("val/tokens") == reference.metrics("val/tokens")
    assert set(reference.metrics("val/tokens")) == {1} and reference.metrics("val/tokens")[1] > 0
    torch.testing.assert_close(run.metrics("val/loss")[1], reference.metrics("val/loss")[1], **LOSS_TOL)


def trained_until(run: Run, step: int, out: Path) -> Path:
    """``run``'s checkpoints as a run stopped right after ``step`` left them, in another directory
    (a resumed run must not mind that its directory moved)."""
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    for i in range(1, step + 1):
        src = run.checkpoints / f"0-step={i}.ckpt"  # a file (ddp) or a directory of shards (fsdp)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, ckpts / src.name)
    last = ckpts / f"0-step={step}.ckpt"
    (shutil.copytree if last.is_dir() else shutil.copy)(last, ckpts / "last.ckpt")
    return out


# --------------------------------------------------------------------------------------------------
# the runs (each test module runs them once)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    args = ["synth", "--out", str(out), "--train", "12", "--val", "3", "--test", "3", "--faces", "1"]
    assert main([*args, "--jobs", "1", "--seed", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory) -> Run:
    """The reference: one process, the global batch accumulated over 2 batches."""
    return train(corpus, tmp_path_factory.mktemp("single") / "run", *ONE_PROCESS)


@pytest.fixture(scope="module")
def ddp(corpus, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("ddp") / "run"
    return train(corpus, out, *TWO_PROCESSES, "train.strategy=ddp", "train.eval_at_end=true")


@pytest.fixture(scope="module")
def fsdp(corpus, tmp_path_factory) -> Run:
    """FSDP with activation checkpointing of the LLM blocks (recomputing gives the same gradients)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    return train(corpus, out, *TWO_PROCESSES, "train.strategy=fsdp", "model.llm.gradient_checkpointing=true")


# --------------------------------------------------------------------------------------------------
# tests


def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(ddp, single):
    assert_same_losses(ddp, single)
    assert_same_weights(ddp.weights(), single.weights())
    assert ddp.metrics("train/tokens") == single.metrics("train/tokens")
    # the frozen parts are written from the same seeded build
    frozen, ref_frozen = (load_file(str(r.model / "frozen.safetensors")) for r in (ddp, single))
    assert set(frozen) == set(ref_frozen) and all(torch.equal(frozen[k], ref_frozen[k]) for k in frozen)
    # checkpoints hold the trainable weights only
    ckpt = torch.load(ddp.checkpoints / "0-step=3.ckpt", map_location="cpu", weights_only=True)
    assert {k.removeprefix("model.") for k in ckpt["state_dict"]} == set(ddp.weights())
    assert ckpt["sampler"]["global_consumed"] == 6 and ckpt["sampler"]["world_size"] == 2
    # only rank 0 reports the model and evaluates it (the other rank used to race it to the directory)
    assert ddp.log.count("model written to") == 1
    assert (ddp.out / "eval" / "results.json").is_file()


def test_fsdp_on_two_processes_checkpoints_shards_that_consolidate_into_a_loadable_model(fsdp, single):
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.dataset import build_dataloader, load_split
    from llama_avsr.model_dir import load_model_dir
    from llama_avsr.training.distributed import read_trainable_state
    from llama_avsr.training.run import average_checkpoints

    assert_same_losses(fsdp, single)  # gradient clipping by norm included (over all shards)
    # sharded checkpoints: one file of trainable weights and optimiser state per rank
    step3 = fsdp.checkpoints / "0-step=3.ckpt"
    assert step3.is_dir() and sorted(p.name for p in step3.glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    weights = fsdp.weights()
    assert {k.removeprefix("model.") for k in read_trainable_state(step3)} == set(weights)
    # the model directory is the average of the last two sharded checkpoints, consolidated
    averaged = average_checkpoints([fsdp.checkpoints / "0-step=2.ckpt", step3])
    assert set(averaged) == set(weights) and all(torch.equal(averaged[k], weights[k]) for k in weights)
    assert_same_weights(weights, single.weights())

    # on one process: the model directory holds the frozen parts of the single-process run's and the
    # consolidated weights, and gives its outputs to the tolerance of the training comparison
    frozen, ref_frozen = (load_file(str(r.model / "frozen.safetensors")) for r in (fsdp, single))
    assert set(frozen) == set(ref_frozen) and all(torch.equal(frozen[k], ref_frozen[k]) for k in frozen)
    model, exp = load_model_dir(fsdp.model)
    reference, _ = load_model_dir(single.model)
    loader = build_dataloader(
        load_split(exp.data, "val"),
        exp.data,
        Collator(model.tokenizer, model.cfg.modalities),
        "val",
    )
    batches = list(loader)
    with torch.no_grad():
        outputs = [logits(model, b) for b in batches]
        for b, out in zip(batches, outputs, strict=True):
            torch.testing.assert_close(out, logits(reference, b), **WEIGHTS_TOL)
        reference.load_trainable(averaged)  # the single-process run's model with FSDP's weights
        assert all(torch.equal(out, logits(reference, b)) for b, out in zip(batches, outputs, strict=True))


def logits(model, batch) -> torch.Tensor:
    seq = model.prepare(batch, with_targets=True)
    out = model.llm(
        inputs_embeds=seq.embeds, attention_mask=seq.attention_mask, position_ids=seq.position_ids
    )
    return out.logits


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_run_resumes_on_one_process(strategy, request, single, tmp_path, corpus):
    """Stopped after step 2 of 3 on 2 processes, finished on 1 (accumulating 2 batches: the same
    global batch): the sampler continues at the 5th batch of the epoch, the optimiser, schedule and
    weights where they were; the result is the uninterrupted run's."""
    two = request.getfixturevalue(strategy)
    stopped = trained_until(two, 2, tmp_path / "run")
    resumed = train(corpus, stopped, *ONE_PROCESS, resume=True)
    assert resumed.metrics("train/loss").keys() == {2}  # only step 3 ran
    torch.testing.assert_close(resumed.metrics("train/loss")[2], single.metrics("train/loss")[2], **LOSS_TOL)
    last = torch.load(resumed.checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and last["lr_schedulers"][0]["last_epoch"] == 3
    assert last["sampler"]["world_size"] == 1 and last["sampler"]["global_consumed"] == 6
    assert_same_weights(resumed.weights(), single.weights())
