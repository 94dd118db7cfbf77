"""End to end with tiny random models on a dozen synthetic utterances:
synth → train a few steps → eval (clean + noise) → transcribe a raw video, for every modality;
resume after a hard kill; checkpoint averaging; the real demo configuration (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llama_avsr.cli import main
from llama_avsr.synth import tts

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"

pytestmark = pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed")

#: modality name → overrides turning the tiny AVSR config into it (modalities are data)
MODALITIES = {
    "audio": [
        "model.streams={audio: {encoder: whisper, inputs: [audio], compression: {kind: stack, ratio: 4}, "
        "projector: {hidden: 32}, begin_token: '<audio>', end_token: '</audio>'}}",
        "model.encoders={whisper: {kind: whisper, arch: tiny-whisper, options: {pad_to_30s: false}}}",
    ],
    "video": [
        "model.streams={video: {encoder: avhubert, inputs: [video], compression: {kind: stack, ratio: 2}, "
        "projector: {hidden: 32}, begin_token: '<video>', end_token: '</video>'}}",
        "model.encoders={avhubert: {kind: avhubert, arch: tiny-avhubert, frozen: false}}",
    ],
    "audiovisual": [],
    # one AV-HuBERT for both modalities, one shared projector, no delimiters (the reference's layout)
    "audiovisual_avhubert": [
        "model.streams={av: {encoder: avhubert, inputs: [audio, video], compression: {kind: stack, ratio: 2}, "
        "projector: {hidden: 32}}}",
        "model.encoders={avhubert: {kind: avhubert, arch: tiny-avhubert, options: {lora: true}}}",
    ],
    # the same AV-HuBERT run twice (audio only, video only) into two projectors with delimiters
    "audiovisual_avhubert_two_projectors": [
        "model.streams={audio: {encoder: avhubert, inputs: [audio], compression: {kind: stack, ratio: 2}, "
        "projector: {hidden: 32}, begin_token: '<audio>', end_token: '</audio>'}, "
        "video: {encoder: avhubert, inputs: [video], compression: {kind: stack, ratio: 2}, "
        "projector: {hidden: 32}, begin_token: '<video>', end_token: '</video>'}}",
        "model.encoders={avhubert: {kind: avhubert, arch: tiny-avhubert, options: {lora: true}}}",
    ],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    assert (
        main(
            [
                "synth",
                "--out",
                str(out),
                "--train",
                "12",
                "--val",
                "3",
                "--test",
                "3",
                "--faces",
                "1",
                "--jobs",
                "1",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    return out


def common(corpus: Path, out: Path) -> list[str]:
    noise = next((corpus / "synth" / "train").rglob("*.wav"))
    eval_noise = next((corpus / "synth" / "val").rglob("*.wav"))
    return [
        f"train.out_dir={out}",
        f"data.root={corpus}",
        "data.train_csv=synth_train.csv",
        "data.val_csv=synth_val.csv",
        "data.test_csv=synth_test.csv",
        f"data.noise_file={noise}",
        f"data.eval_noise_file={eval_noise}",
    ]


def face_video(corpus: Path) -> Path:
    manifest = json.loads((corpus / "synth.json").read_text())
    rel = manifest["faces"][0]["video"]
    return next(p for p in (corpus / manifest["dataset"] / rel, corpus / rel) if p.exists())


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_train_eval_transcribe(modality, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY), *common(corpus, out), "train.max_steps=2", *MODALITIES[modality]]
    assert main(args) == 0
    model_dir = out / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "trainable.safetensors").is_file()
    assert list((out / "logs" / "csv").glob("metrics.csv")), "CSV log missing"
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents*")), "TensorBoard log missing"

    assert main(["eval", "--model", str(model_dir), "--snr", "clean,0", "--out", str(tmp_path / "eval")]) == 0
    table = capsys.readouterr().out
    assert "WER %" in table and "clean" in table and "seen %" in table and "held-out %" in table
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (summary,) = results.values()
    expected_snrs = {"clean", "0"} if "audio" in modality else {"clean"}
    assert set(summary["by_snr"]) == expected_snrs
    for r in summary["by_snr"].values():
        assert r["utterances"] == 3 and r["wer_ref"] > 0 and 0 <= r["cer"]
        assert r["wer_sub"] + r["wer_ins"] + r["wer_del"] == round(r["wer"] * r["wer_ref"])
        # the 3 test utterances: the two held-out test voices first, then a training voice
        groups = r["groups"]
        assert (groups["held_out"]["utterances"], groups["seen"]["utterances"]) == (2, 1)
        assert groups["held_out"]["wer_ref"] + groups["seen"]["wer_ref"] == r["wer_ref"]
        assert {s for s, v in r["speakers"].items() if not v["seen"]} == {"spk10", "spk11"}
    assert (tmp_path / "eval" / "wer_vs_snr.png").stat().st_size > 1000
    lines = (tmp_path / "eval" / f"{summary['label']}_clean.jsonl").read_text().splitlines()
    assert len(lines) == 3 and {"id", "ref", "hyp", "wer"} <= set(json.loads(lines[0]))

    assert main(["transcribe", "--model", str(model_dir), "--json", str(face_video(corpus))]) == 0
    rec = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]
    assert "text" in rec and rec["seconds"] > 0.5


def test_transcribe_reports_bad_files_and_goes_on(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(TINY), *common(corpus, out), "train.max_steps=1"]) == 0
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    rc = main(["transcribe", "--model", str(out / "model"), "--json", str(bad), str(face_video(corpus))])
    assert rc == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert "broken.mp4" in recs[0]["error"] and "text" in recs[1]


def test_eval_counts_unreadable_items_and_can_score_them_as_errors(corpus, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert main(["train", "--config", str(TINY), *common(corpus, out), "train.max_steps=1"]) == 0
    broken = tmp_path / "corpus"
    shutil.copytree(corpus, broken)
    victim = sorted((broken / "synth" / "test").rglob("*.mp4"))[0]
    for f in (victim, victim.with_suffix(".wav")):
        f.write_bytes(b"\x00" * 100)
    speaker = victim.parent.name
    args = ["eval", "--model", str(out / "model"), "--root", str(broken), "--snr", "clean"]
    assert main([*args, "--out", str(tmp_path / "left-out")]) == 0
    table = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "scored"), "--score-skipped"]) == 0
    scored_table = capsys.readouterr().out
    (left,) = json.loads((tmp_path / "left-out" / "results.json").read_text()).values()
    (scored,) = json.loads((tmp_path / "scored" / "results.json").read_text()).values()
    a, b = left["by_snr"]["clean"], scored["by_snr"]["clean"]
    assert (a["utterances"], a["skipped"], b["utterances"], b["skipped"]) == (2, 1, 2, 1)
    assert a["speakers"][speaker]["skipped"] == 1
    # scored: every reference word of the unreadable item is a deletion
    lines = (tmp_path / "scored" / f"{scored['label']}_clean.jsonl").read_text().splitlines()
    (skipped,) = [json.loads(x) for x in lines if json.loads(x).get("skipped")]
    n = len(skipped["ref"].split())
    assert b["wer_ref"] == a["wer_ref"] + n and b["wer_del"] == a["wer_del"] + n
    assert "not in the WER" in table and "scored as full errors" in scored_table


HELPER = REPO / "tests" / "helpers" / "train_until.py"
#: a run of 8 steps (several epochs of the tiny corpus), checkpointed every 2, with dropout-free float32
RESUMABLE = ["train.max_steps=8", "train.checkpoint_every_steps=2", "data.max_frames=80"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def _train_process(args: list[str]) -> str:
    """``llama-avsr train ARGS`` in a fresh process; returns its log (stderr). The runs compared bit for
    bit all run in fresh processes: global state left by other tests in this one (e.g. the benchmark's
    thread count) would change float32 rounding."""
    proc = subprocess.run(
        [sys.executable, "-m", "llama_avsr.cli", "train", *args],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stderr


def _kill_at(step: int, args: list[str]) -> Path:
    """Run ``train`` in a child process, wait for it to report the checkpoint of ``step`` written and
    renamed into place (it then blocks), SIGKILL it there; returns that checkpoint."""
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(step), *args],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ready = None
    try:
        for line in proc.stdout:  # blocks until the child is at the state we need (or ends)
            if line.startswith("READY "):
                ready = Path(line.removeprefix("READY ").strip())
                break
    finally:
        proc.kill()
        proc.wait()
    assert ready is not None, f"the child ended before step {step} (rc {proc.returncode})"
    return ready


def _csv_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with (run / "logs" / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _trained(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "trainable.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    _train_process(["--config", str(TINY), *common(corpus, out), *RESUMABLE])
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _trained(a), _trained(b)
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs from the uninterrupted run"
    assert _csv_rows(a) == _csv_rows(b)
    la = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert la["global_step"] == lb["global_step"] == 8
    for k, v in la["state_dict"].items():
        assert torch.equal(v, lb["state_dict"][k])


def test_resume_after_kill_continues_step_optimizer_and_sampler(corpus, tmp_path, uninterrupted):
    """Killed right after the checkpoint of step 4, resumed: the run ends bit-identical to an
    uninterrupted one (weights, optimiser, schedule, data order, augmentation, CSV rows)."""
    out = tmp_path / "run"
    ckpt = _kill_at(4, ["--config", str(TINY), *common(corpus, out), *RESUMABLE])
    assert ckpt.name.endswith("step=4.ckpt")
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4 and last["sampler"]["consumed"] >= 1
    assert all(k.startswith("model.") for k in last["state_dict"])  # trainable weights only
    assert not (out / "model").exists()
    rows_before = _csv_rows(out)

    _train_process(["--config", str(TINY), "--resume", *common(corpus, out), *RESUMABLE])
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # the LR schedule continued from the restored step instead of restarting its warm-up
    assert final["lr_schedulers"][0]["last_epoch"] == 8
    assert _csv_rows(out)[: len(rows_before)] == rows_before  # the rows before the kill are kept
    _assert_same_run(uninterrupted, out)


def test_resume_picks_the_newest_complete_checkpoint_when_last_ckpt_is_stale(corpus, tmp_path, uninterrupted):
    """A kill between the step file and last.ckpt: last.ckpt still holds step 2, step 4 is on disk."""
    out = tmp_path / "run"
    _kill_at(4, ["--config", str(TINY), *common(corpus, out), *RESUMABLE])
    ckpts = out / "checkpoints"
    (ckpts / "last.ckpt").write_bytes(next(ckpts.glob("*step=2.ckpt")).read_bytes())
    log = _train_process(["--config", str(TINY), "--resume", *common(corpus, out), *RESUMABLE])
    assert any("resuming from" in line and "step=4.ckpt (step 4)" in line for line in log.splitlines())
    _assert_same_run(uninterrupted, out)


def test_resume_survives_a_truncated_last_ckpt(corpus, tmp_path, uninterrupted):
    out = tmp_path / "run"
    _kill_at(4, ["--config", str(TINY), *common(corpus, out), *RESUMABLE])
    last = out / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    log = _train_process(["--config", str(TINY), "--resume", *common(corpus, out), *RESUMABLE])
    (warning,) = [line for line in log.splitlines() if "unreadable checkpoint" in line]  # one line
    assert str(last) in warning and "step=4.ckpt (step 4) instead" in warning
    _assert_same_run(uninterrupted, out)


def test_resumed_sampler_yields_the_rest_of_the_epoch(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRData, AVSRLightning

    exp = ExperimentConfig.load(TINY, common(corpus, tmp_path) + ["data.max_frames=80"])
    module = AVSRLightning(exp)
    full = list(AVSRData(exp, module).train_dataloader().batch_sampler)
    assert len(full) >= 3
    module.sampler_state = {"epoch": 0, "consumed": 2}
    resumed = list(AVSRData(exp, module).train_dataloader().batch_sampler)
    assert resumed == full[2:]


def test_validation_decodes_in_batches_of_decode_batch_size(corpus, tmp_path):
    """Validation batches hold up to ``decode.batch_size`` utterances whatever the training frame budget
    (what `llama-avsr eval` does): greedy decoding in batches of a handful is several times slower.
    Training batches keep the frame budget."""
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRData, AVSRLightning

    exp = ExperimentConfig.load(
        TINY,
        common(corpus, tmp_path) + ["data.max_frames=80", "data.max_batch_size=1", "decode.batch_size=3"],
    )
    data = AVSRData(exp, AVSRLightning(exp))
    val = [len(b) for b in data.val_dataloader().batch_sampler]
    n_val = len(data.val_dataloader().dataset)
    assert max(val) == min(3, n_val) and sum(val) == n_val
    assert {len(b) for b in data.train_dataloader().batch_sampler} == {1}


def test_final_model_is_the_average_of_the_last_checkpoints(corpus, tmp_path):
    from llama_avsr.training.run import average_checkpoints, checkpoints_in_order

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(TINY),
                *common(corpus, out),
                "train.max_steps=5",
                "train.checkpoint_every_steps=2",
                "train.average_last=2",
                "data.max_frames=80",
            ]
        )
        == 0
    )
    ckpts = checkpoints_in_order(out / "checkpoints")
    assert [int(p.stem.split("step=")[1]) for p in ckpts][-2:] == [
        4,
        5,
    ]  # the final step is saved even off the interval
    a, b = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in ckpts[-2:])
    saved = load_file(str(out / "model" / "trainable.safetensors"))
    assert set(saved) == {k.removeprefix("model.") for k in a}
    for k, v in a.items():
        if v.is_floating_point():
            torch.testing.assert_close(saved[k.removeprefix("model.")], (v + b[k]) / 2)
    # averaging itself: element-wise mean, integer buffers from the last checkpoint
    files = []
    for i, (w, n) in enumerate([(1.0, 1), (2.0, 2), (6.0, 3)]):
        f = tmp_path / f"c{i}.ckpt"
        torch.save({"state_dict": {"model.w": torch.full((2,), w), "model.n": torch.tensor(n)}}, f)
        files.append(f)
    avg = average_checkpoints(files)
    assert avg["w"].tolist() == [3.0, 3.0] and avg["n"].item() == 3


def test_validation_wer_is_logged_and_selects_the_final_model(corpus, tmp_path):
    import csv

    out = tmp_path / "run"
    overrides = [
        "train.max_steps=5",
        "train.val_every_steps=2",
        "train.select=best_val_wer",
        "data.max_frames=80",
    ]
    assert main(["train", "--config", str(TINY), *common(corpus, out), *overrides]) == 0
    with open(out / "logs" / "csv" / "metrics.csv", newline="") as f:
        logged = [float(r["val/wer"]) for r in csv.DictReader(f) if r.get("val/wer")]
    training = json.loads((out / "model" / "results.json").read_text())["training"]
    history = training["val_wer"]
    # validated at steps 2 and 4 during training, and the final weights (step 5) after it
    assert [h["step"] for h in history] == [2, 4, 5] and [h["wer"] for h in history] == logged
    sel = training["selection"]
    best = min(history, key=lambda h: h["wer"])
    assert sel["select"] == "best_val_wer" and (sel["step"], sel["val_wer"]) == (best["step"], best["wer"])
    (name,) = sel["checkpoints"]
    (ckpt,) = [p for p in (out / "checkpoints").rglob(name)]
    chosen = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    saved = load_file(str(out / "model" / "trainable.safetensors"))
    assert set(saved) == {k.removeprefix("model.") for k in chosen}
    for k, v in chosen.items():
        torch.testing.assert_close(saved[k.removeprefix("model.")], v)


@pytest.mark.slow
def test_real_demo_configuration_runs_a_few_steps(tmp_path, capsys):
    """The demo itself (real Whisper tiny.en, SmolLM2-135M, AV-HuBERT from scratch), shortened."""
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--train",
            "24",
            "--val",
            "4",
            "--test",
            "4",
            "--minutes",
            "3",
            "train.max_steps=3",
            "decode.num_beams=2",
            "decode.max_new_tokens=8",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Llama-AVSR demo results" in out and "raw video" in out
    res = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(res["wer"]["avsr"]) == {"clean", "0"}
    # two stages: a VSR model, then the AVSR model starting from its video stream and LoRA
    assert set(res["training"]) == {"vsr", "avsr"} and "vsr" in res["wer"]
    vsr = str(tmp_path / "demo" / "vsr" / "model")
    config = json.loads((tmp_path / "demo" / "avsr" / "model" / "config.json").read_text())
    assert config["train"]["init_from"] == {"video": vsr, "llm": vsr}
    # validated on the validation split (the final weights, step 3), which chose the model
    training = res["training"]["avsr"]
    assert [v["step"] for v in training["val_wer"]] == [3]
    assert training["selection"]["select"] == "best_val_wer" and training["selection"]["step"] == 3
    assert "validation WER (4 utterances, greedy" in out


def test_prepared_raw_videos_train_and_evaluate_through_the_same_dataset_code(tmp_path):
    """`prepare` on raw full-face videos → an LRS3-layout corpus that trains and evaluates like the
    synthetic (published-layout) one."""
    raw = tmp_path / "raw_corpus"
    assert (
        main(
            [
                "synth",
                "--out",
                str(raw),
                "--train",
                "2",
                "--val",
                "0",
                "--test",
                "3",
                "--faces",
                "3",
                "--jobs",
                "1",
                "--seed",
                "2",
            ]
        )
        == 0
    )
    prepared = tmp_path / "prepared"
    assert (
        main(["prepare", str(raw / "raw"), "--out", str(prepared), "--dataset", "mine", "--no-progress"]) == 0
    )
    csv = prepared / "labels" / "mine.csv"
    rows = csv.read_text().splitlines()
    assert len(rows) == 3 and all(len(r.split(",", 4)) == 5 and r.split(",", 4)[4] for r in rows)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(TINY),
                f"train.out_dir={out}",
                f"data.root={prepared}",
                f"data.train_csv={csv}",
                "data.val_csv=null",
                f"data.test_csv={csv}",
                f"data.noise_file={next(raw.rglob('*.wav'))}",
                "train.max_steps=1",
            ]
        )
        == 0
    )
    assert main(["eval", "--model", str(out / "model"), "--snr", "clean", "--out", str(tmp_path / "ev")]) == 0
    (summary,) = json.loads((tmp_path / "ev" / "results.json").read_text()).values()
    assert summary["by_snr"]["clean"]["utterances"] == 3


def test_time_budgeted_run_stops_on_time_and_ends_at_the_low_learning_rate(corpus, tmp_path):
    out = tmp_path / "run"
    overrides = [
        "train.schedule=time",
        "train.max_minutes=0.25",
        "train.max_steps=-1",
        "train.epochs=1000",
        "train.warmup_steps=1",
        "train.min_lr_ratio=0.1",
        "data.max_frames=80",
    ]
    # 1000 epochs: the run ends because its budget is spent (no wall-clock bound here: load varies)
    assert main(["train", "--config", str(TINY), *common(corpus, out), *overrides]) == 0
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] >= 2
    final = sorted(out.glob("checkpoints/*step=*.ckpt"))
    ckpt = torch.load(
        max(final, key=lambda p: int(p.stem.split("step=")[1])), map_location="cpu", weights_only=True
    )
    assert ckpt["train_seconds"] >= 15  # stopped by the budget (15 s of training)
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr < 0.5e-3, f"the cosine should have decayed over the budget, lr={lr}"


def train_recording_inputs(corpus, out, steps: int, *settings: str):
    """Train the tiny AV model with ``settings`` (the dataset drops the video of half the utterances);
    per step: (step, ``batch.blanked``, audio all zero, video all zero) per item, and the audio and video
    projectors' weights before training and after each step."""
    from lightning.pytorch.callbacks import Callback

    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.run import train

    seen: list[tuple[int, list[tuple[str, ...]], list[bool], list[bool]]] = []
    weights: dict[str, list[torch.Tensor]] = {"audio": [], "video": []}

    class Record(Callback):
        def on_train_start(self, trainer, module):
            self.on_train_batch_end(trainer, module, None, None, -1)

        def on_train_batch_end(self, trainer, module, outputs, item, batch_idx):
            for k, w in weights.items():
                w.append(
                    torch.cat([p.detach().flatten().clone() for p in module.model.projectors[k].parameters()])
                )
            if item is None:
                return
            batch = item[0]
            silent = [bool((batch.inputs["audio"][i] == 0).all()) for i in range(len(batch))]
            dark = [bool((batch.inputs["video"][i] == 0).all()) for i in range(len(batch))]
            seen.append((trainer.global_step - 1, list(batch.blanked), silent, dark))

    exp = ExperimentConfig.load(
        TINY,
        common(corpus, out)
        + [
            f"train.max_steps={steps}",
            "data.max_frames=200",
            "data.max_batch_size=4",
            "data.modality_dropout={video: 0.5}",
            "train.val_every_steps=100",
            "train.select=last",
            *settings,
        ],
    )
    train(exp, callbacks=[Record()])
    assert [s for s, *_ in seen] == list(range(steps))
    for _, blanked, silent, dark in seen:
        for b, a, d in zip(blanked, silent, dark, strict=True):
            assert not (a and d), "an item lost both inputs"
            assert a == ("audio" in b) and d == ("video" in b)
    return seen, weights


def audio_blanked_steps(seen) -> list[bool | None]:
    """Per step, whether the audio was blanked in every item that has its video (else in none); ``None``
    for a step whose items all had their video dropped by the dataset."""
    out = []
    for _, _, silent, dark in seen:
        with_video = [a for a, d in zip(silent, dark, strict=True) if not d]
        assert len(set(with_video)) <= 1, "all or none of a step's items"
        out.append(with_video[0] if with_video else None)
    return out


def test_blank_first_steps_blanks_the_audio_of_every_utterance_with_video_before_step_n(corpus, tmp_path):
    """``train.blank_first_steps={audio: 2}``: the LLM's first two steps read the video alone; items whose
    video the dataset's modality dropout blanked keep their audio (never both blanked); later steps see
    the dataset's inputs unchanged. The audio stream's projector stays as it was while its input is blank
    (its gradients would come from silence alone), and learns afterwards."""
    seen, weights = train_recording_inputs(corpus, tmp_path, 4, "train.blank_first_steps={audio: 2}")
    assert [d for d in audio_blanked_steps(seen)[:2] if d is not None] in ([True], [True, True])
    assert not any(audio_blanked_steps(seen)[2:])
    early = [d for step, _, _, dark in seen if step < 2 for d in dark]
    assert not all(early)  # with dropout 0.5 on video, some items read the video during the curriculum
    audio, video = weights["audio"], weights["video"]  # before training, then after each step
    assert torch.equal(audio[0], audio[1]) and torch.equal(audio[1], audio[2])
    assert not torch.equal(audio[2], audio[3]) and not torch.equal(audio[3], audio[4])
    assert all(not torch.equal(a, b) for a, b in zip(video, video[1:], strict=False))


def test_blank_batches_blanks_the_audio_of_whole_steps_drawn_from_the_seed(corpus, tmp_path):
    """``train.blank_batches={audio: 0.5}``: about half of the steps read the video alone (every item
    whose video is present), the others the dataset's inputs; the same steps in a second run with the
    same seed; the audio projector is updated exactly in the steps that read the audio."""
    steps = 8
    seen, weights = train_recording_inputs(corpus, tmp_path / "a", steps, "train.blank_batches={audio: 0.5}")
    drawn = audio_blanked_steps(seen)
    assert drawn.count(True) and drawn.count(False)
    audio = weights["audio"]
    kept = [torch.equal(a, b) for a, b in zip(audio, audio[1:], strict=False)]
    assert all(k == d for k, d in zip(kept, drawn, strict=True) if d is not None)
    again, _ = train_recording_inputs(corpus, tmp_path / "b", steps, "train.blank_batches={audio: 0.5}")
    assert audio_blanked_steps(again) == drawn


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.blank_first_steps={audio: 2, video: 3}", "one modality at most"),
        ("train.blank_first_steps={audio: -1}", "integers >= 0"),
        ("train.blank_first_steps={depth: 5}", "not one of several modalities"),
        ("train.blank_batches={audio: 0.6, video: 0.5}", "summing to less than 1"),
        ("train.blank_batches={audio: 1.0}", r"in \[0, 1\)"),
        ("train.blank_batches={depth: 0.2}", "not one of several modalities"),
    ],
)
def test_blank_first_steps_refuses_what_cannot_work(override, message):
    from llama_avsr.config import ConfigError
    from llama_avsr.training.config import ExperimentConfig

    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.load(TINY, [override])


def test_blank_first_steps_needs_two_modalities():
    from llama_avsr.config import ConfigError
    from llama_avsr.training.config import ExperimentConfig

    with pytest.raises(ConfigError, match="not one of several modalities"):
        ExperimentConfig.load(TINY, [*MODALITIES["audio"], "train.blank_first_steps={audio: 10}"])


def test_eval_dtype_casts_the_model_and_records_the_precision(corpus, tmp_path, uninterrupted):
    """``eval --dtype``: the same model decoded in another precision (e.g. float32 against bf16), the
    precision recorded with each result and in the default label; without it the saved dtypes decode.
    The model's card keeps the evaluation of the model as saved."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(uninterrupted / "model", model)
    precision = {}
    for dtype in (None, "bfloat16"):
        out = tmp_path / str(dtype)
        args = ["eval", "--model", str(model), "--snr", "clean", "--out", str(out)]
        assert main([*args, *(["--dtype", dtype] if dtype else [])]) == 0
        ((label, summary),) = json.loads((out / "results.json").read_text()).items()
        precision[dtype] = (label, summary["by_snr"]["clean"]["llm_dtype"])
    # the tiny recipe's LLM is float32
    assert precision == {None: ("audio+video", "float32"), "bfloat16": ("audio+video@bfloat16", "bfloat16")}
    card = json.loads((model / "results.json").read_text())["evaluation"]
    assert card["label"] == "audio+video" and card["by_snr"]["clean"]["llm_dtype"] == "float32"
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(model), "--dtype", "int8"])
