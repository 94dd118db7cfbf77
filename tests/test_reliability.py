"""The reliability catalogue (issue #13): no silent wrong result, no lost data, one-line errors.

Each test is named after the case it guards. Tests with a second writer run it as a real process
(``tests/helpers/hold_lock.py``) and synchronise on what it prints, never on timing. The kill-and-resume
cases (exact continuation, stale or truncated ``last.ckpt``) are in ``test_end_to_end.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_avsr import safe_load
from llama_avsr.cli import main
from llama_avsr.errors import UserError
from llama_avsr.io import atomic_write_text, atomic_write_with, exclusive_lock, update_json

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"
HOLD_LOCK = REPO / "tests" / "helpers" / "hold_lock.py"


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    """The one line ``llama-avsr COMMAND: message`` a user error prints on stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llama-avsr ")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    return lines[0]


class _SecondWriter:
    """Another process holding the writer's lock on ``folder`` until :meth:`kill` (SIGKILL)."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        }
        args = [sys.executable, str(HOLD_LOCK), str(folder), *([name] if name else [])]
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # blocks until the lock is held
        assert line.strip() == "LOCKED", line

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY), f"train.out_dir={out}", *extra]


# -- run folders: refusal, --overwrite, lock ------------------------------------------------------------


def test_train_into_an_existing_run_folder_without_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "0-step=4.ckpt").write_bytes(b"old run")
    (out / "experiment.json").write_text("{}")
    assert main(_train_args(out)) == 2
    message = _one_line_error(capsys)
    assert str(out) in message and "--resume" in message and "--overwrite" in message
    assert (out / "checkpoints" / "0-step=4.ckpt").read_bytes() == b"old run"  # nothing touched


def test_overwrite_removes_only_the_previous_runs_outputs(tmp_path):
    from llama_avsr.training.run import RUN_OUTPUTS, prepare_run_folder

    out = tmp_path / "run"
    for name in RUN_OUTPUTS:
        (out / name).mkdir(parents=True) if "." not in name else (out / name).write_text("{}")
    (out / "notes.txt").write_text("mine")
    prepare_run_folder(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="exclude each other"):
        prepare_run_folder(out, resume=True, overwrite=True)


def test_second_train_into_a_locked_run_folder_is_refused_and_a_killed_holder_leaves_no_stale_lock(
    tmp_path, capsys
):
    out = tmp_path / "run"
    holder = _SecondWriter(out)
    try:
        assert main(_train_args(out, "train.max_steps=1", "data.root=/nonexistent")) == 2
        message = _one_line_error(capsys)
        assert str(out) in message and "already writing" in message
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
    with exclusive_lock(out, "this test"):  # free again at once: no stale lock
        pass


def test_train_max_steps_zero_is_refused(tmp_path, capsys):
    assert main(_train_args(tmp_path / "run", "train.max_steps=0")) == 2
    assert "train.max_steps=0 trains nothing" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_empty_or_missing_label_csv_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    for csv_name, expected in (
        ("missing.csv", "label file not found"),
        ("empty.csv", "no usable utterances"),
    ):
        out = tmp_path / f"run-{csv_name}"
        rc = main(_train_args(out, f"data.root={tmp_path}", f"data.train_csv={tmp_path / csv_name}"))
        assert rc == 2
        message = _one_line_error(capsys)
        assert csv_name in message and expected in message
        assert not (out / "experiment.json").exists()  # refused before anything was written


# -- CSV metric rows across a resume ---------------------------------------------------------------------


def test_resuming_keeps_the_csv_metric_rows_logged_before_the_resume_point(tmp_path):
    """Rows 0–5 on disk (4 and 5 logged after the last checkpoint), the resumed run logs from 4 on."""
    from llama_avsr.training.run import _CSVLogger

    metrics = tmp_path / "logs" / "csv" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("epoch,step,train/loss\n" + "".join(f"0,{s},{s / 10}\n" for s in range(6)))
    logger = _CSVLogger(tmp_path / "logs", name="csv", version="")  # resumed after step 4's checkpoint
    logger.log_metrics({"train/loss": 0.4, "train/lr": 1e-3, "epoch": 0}, step=4)
    logger.save()
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]  # rows from 4 on are logged again
    assert rows[0]["train/loss"] == "0.0" and rows[4]["train/lr"] == "0.001"


# -- model directories -----------------------------------------------------------------------------------


def test_run_folder_passed_as_model_is_refused_locally_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("a local folder must never be looked up on the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "exp" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "model" / "config.json").write_text("{}")
    assert main(["eval", "--model", "runs/exp"]) == 2  # spelled like a hub id owner/name
    message = _one_line_error(capsys)
    assert "runs/exp: a training run folder" in message and "runs/exp/model" in message


def test_model_dir_keeps_the_old_model_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    from llama_avsr import model_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out and ".old." not in str(src):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(model_dir.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        model_dir._write_dir(out, lambda tmp: (tmp / "config.json").write_text('{"new": true}'))
    assert json.loads((out / "config.json").read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind
    monkeypatch.undo()
    model_dir._write_dir(out, lambda tmp: (tmp / "config.json").write_text('{"new": true}'))
    assert json.loads((out / "config.json").read_text()) == {"new": True}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# -- atomic writes and the locked read-modify-write of results.json -------------------------------------


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "experiment.json"
    atomic_write_text(target, "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["experiment.json"]


def _interrupt_at_fsync(fd: int) -> None:
    raise KeyboardInterrupt  # Ctrl-C (or a kill) after the new bytes are written, before the rename


def _bench_out(target: Path, interrupted: bool, monkeypatch) -> None:
    import llama_avsr.benchmark as bench

    # the report's file is under test, not the measurements
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: {"new": "report"})
    monkeypatch.setattr(bench, "format_report", lambda report: "")
    argv = ["bench", "--config", str(REPO / "configs" / "bench" / "tiny.yaml"), "--out", str(target)]
    assert main(argv) == (130 if interrupted else 0)  # 130: "llama-avsr bench: interrupted"


def _transcript(target: Path, interrupted: bool, monkeypatch) -> None:
    from llama_avsr.decoding.transcriber import Result, Segment
    from llama_avsr.decoding.writers import write_result

    result = Result(text="new text", segments=[Segment(0.0, 1.0, "new text")], duration=1.0)
    with pytest.raises(KeyboardInterrupt) if interrupted else contextlib.nullcontext():
        write_result(result, target.parent, ["json"], stem=target.stem)


def _split_csv(target: Path, interrupted: bool, monkeypatch) -> None:
    from llama_avsr.prepare.splits import write_splits

    labels = target.with_name("labels.csv")
    labels.write_text("d,spk/a,50,0,new text\n")
    with pytest.raises(KeyboardInterrupt) if interrupted else contextlib.nullcontext():
        write_splits(labels, {"spk/a": "train"})


@pytest.mark.parametrize(
    ("name", "write"),
    [("bench.json", _bench_out), ("clip.json", _transcript), ("labels_train.csv", _split_csv)],
    ids=["bench-out", "transcript", "split-csv"],
)
def test_an_interrupted_write_leaves_the_previous_file_intact(name, write, tmp_path, monkeypatch):
    """A write interrupted after its bytes are out (Ctrl-C at the fsync before the rename) leaves the
    previous file whole and no temporary file behind; not interrupted, the same write replaces it."""
    target = tmp_path / name
    target.write_text("previous\n")
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _interrupt_at_fsync)
        write(target, True, m)
    assert target.read_text() == "previous\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    write(target, False, monkeypatch)
    assert "new" in target.read_text()


def test_every_output_file_is_written_atomically():
    """No direct write of an output file in src/: results, reports, transcripts, CSVs and weights go
    through ``llama_avsr.io``'s atomic helpers (temporary file, fsync, rename), or are written into a
    temporary file or folder that is renamed over the target as a whole. The few other writes are
    listed here with the reason they are safe."""
    import ast

    allowed = {
        # lock files: empty, their content is never read
        ("synth/babble.py", "open(root / '.babble.lock', 'w')"),
        ("hub/sources.py", "lock_path.open('a')"),
        # not a file of ours: asks the kernel to reset the process's peak-memory counter
        ("benchmark/measure.py", "Path('/proc/self/clear_refs').write_text('5')"),
        # model_dir: every file is written into the temporary folder of _write_dir, renamed as a whole
        (
            "model_dir.py",
            "save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))",
        ),
        # a consolidated FSDP checkpoint in a scratch folder of this process, read back at once
        ("training/run.py", "torch.save(consolidate_checkpoint(last), ckpt_path)"),
    }

    def is_mode(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and set(node.value) <= set("rwabxt+")
            and bool(set(node.value) & set("wax"))
        )

    def target(call: ast.Call) -> ast.AST | None:
        """The file a call writes, or None when it writes nothing."""
        f = call.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
        args = call.args
        if name in ("write_text", "write_bytes") and isinstance(f, ast.Attribute):
            return f.value
        if name in ("savefig", "save_file") or (name == "save" and owner in ("np", "numpy")):
            return args[0] if name != "save_file" else args[1]
        if (name == "save" and owner == "torch") or (name == "dump" and owner in ("json", "pickle")):
            return args[1]
        if name in ("open", "fdopen"):
            modes = [*args[:2], *(k.value for k in call.keywords if k.arg == "mode")]
            if any(is_mode(m) for m in modes):
                path_method = isinstance(f, ast.Attribute) and owner not in ("os", "io", "av", "wave")
                return f.value if path_method else args[0]
        return None

    offenders = []
    for path in sorted((REPO / "src" / "llama_avsr").rglob("*.py")):
        rel = path.relative_to(REPO / "src" / "llama_avsr").as_posix()
        if rel == "io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            t = target(node) if isinstance(node, ast.Call) else None
            if t is None:
                continue
            # a temporary file or folder renamed afterwards, or the open file atomic_write_with hands over
            if any(isinstance(n, ast.Name) and n.id in ("tmp", "f", "fd") for n in ast.walk(t)):
                continue
            if (rel, ast.unparse(node)) not in allowed:
                offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def _add_results(path: str, label: str, n: int) -> None:
    for i in range(n):
        update_json(path, {f"{label}{i}": {"wer": i}})


def test_concurrent_eval_results_json_writers_keep_each_others_results(tmp_path):
    path = str(tmp_path / "eval" / "results.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_results, args=(path, label, 15)) for label in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    merged = json.loads(Path(path).read_text())
    assert set(merged) == {f"{label}{i}" for label in "ab" for i in range(15)}


# -- safe loading -------------------------------------------------------------------------------------------


def test_every_checkpoint_read_goes_through_the_safe_loader():
    """No torch.load outside llama_avsr/safe_load.py (one reviewed place, weights_only=True)."""
    import ast

    def loads_pickles(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            if isinstance(f, ast.Attribute) and f.attr == "load" and ast.unparse(f.value) == "torch":
                return True
        return False

    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "src").rglob("*.py")
        if p.name != "safe_load.py" and loads_pickles(p)
    ]
    assert offenders == []
    assert loads_pickles(REPO / "src" / "llama_avsr" / "safe_load.py")  # the check itself works


def test_refused_fairseq_global_is_reported_with_its_name_and_reason(tmp_path, monkeypatch):
    import types

    from llama_avsr.reference import ReferenceCheckpointError, read_reference_checkpoint

    module = types.ModuleType("fairseq")
    monkeypatch.setitem(sys.modules, "fairseq", module)

    class Task:
        pass

    Task.__module__, Task.__qualname__ = "fairseq", "Task"
    module.Task = Task
    torch.save({"llm.x": torch.zeros(1), "task": Task()}, tmp_path / "fs.pth")
    monkeypatch.undo()
    with pytest.raises(ReferenceCheckpointError) as err:
        read_reference_checkpoint(tmp_path / "fs.pth")
    message = str(err.value)
    assert "fs.pth" in message and "fairseq.Task" in message and "weights-only load does not run" in message


def test_malicious_pytorch_model_bin_in_an_llm_source_folder_is_refused_naming_the_file(tmp_path):
    from llama_avsr.config import LLMConfig, find_arch
    from llama_avsr.models.llm import load_llm

    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "config.json").write_text(find_arch("tiny-llama").read_text())
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": _Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(safe_load.CheckpointReadError) as err:
        load_llm(LLMConfig(source=str(folder), lora=None), vocab_size=None)
    assert str(folder / "pytorch_model.bin") in str(err.value) and "posix.getcwd" in str(err.value)


def test_lightning_resume_reads_checkpoints_weights_only(tmp_path):
    from llama_avsr.training.run import _AtomicCheckpointIO, find_resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 3, "x": _Evil()}, ckpts / "last.ckpt")
    with pytest.raises(safe_load.CheckpointReadError, match="posix.getcwd"):
        _AtomicCheckpointIO().load_checkpoint(ckpts / "last.ckpt")
    assert find_resume_checkpoint(ckpts) is None  # refused, not resumed from


# -- one-line CLI errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["eval", "--model", "m", "--beams", "0"], "argument --beams: must be >= 1, got 0"),
        (["transcribe", "--model", "m", "--beams", "0", "x.mp4"], "argument --beams: must be >= 1, got 0"),
        (["eval", "--model", "m", "--snr", "abc"], "argument --snr: 'abc' is not an SNR"),
    ],
    ids=["eval-beams-0", "transcribe-beams-0", "snr-abc"],
)
def test_beams_0_and_snr_abc_are_one_line_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_user_errors_print_one_line_and_the_traceback_only_with_v(tmp_path, capsys, caplog):
    assert main(["eval", "--model", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such model directory" in _one_line_error(capsys)
    assert not [r for r in caplog.records if r.exc_info]
    assert main(["-v", "eval", "--model", str(tmp_path / "nowhere")]) == 2
    assert [r for r in caplog.records if r.exc_info]  # -v: the traceback is logged


# -- Whisper's 30 s window -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_to_30s", [True, False])
def test_whisper_input_over_30s_is_not_cut_silently(pad_to_30s, caplog):
    from llama_avsr.config import EncoderConfig
    from llama_avsr.models.encoders.whisper import build_whisper

    enc = build_whisper(
        EncoderConfig(kind="whisper", arch="tiny-whisper", options={"pad_to_30s": pad_to_30s})
    ).eval()
    n = 16_000 * 31
    with caplog.at_level("WARNING"), torch.no_grad():
        enc({"audio": torch.randn(1, n) * 0.1}, {"audio": torch.tensor([n])})
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("llama_avsr")]
    assert "at most 30.0 s" in warning and "31.0 s" in warning
    caplog.clear()
    with caplog.at_level("WARNING"), torch.no_grad():
        enc({"audio": torch.randn(1, 16_000)}, {"audio": torch.tensor([16_000])})
    assert not [r for r in caplog.records if r.name.startswith("llama_avsr")]
