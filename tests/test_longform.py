"""Transcription as a library and long recordings: load_model / transcribe, voice-activity segmentation,
files / folders / globs in the CLI, txt / json / srt / vtt outputs, inference without training code.

Fast tests use a tiny random model (what it says is noise, but deterministic); the WER comparison of a
long recording against its utterances decoded one by one needs a model that transcribes, trained for a
few minutes (slow)."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from longform_model import REPO, build, concatenate_utterances

import llama_avsr
from llama_avsr.cli import main
from llama_avsr.decoding import NoAudioError, NoFaceError, NoVideoError, UnreadableMediaError, load_media
from llama_avsr.decoding.segment import FRAME, plan_segments
from llama_avsr.decoding.writers import timestamp, to_srt, to_vtt
from llama_avsr.synth import tts

TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"

pytestmark = pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed")


# -- corpora and models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    args = ["synth", "--out", str(out), "--train", "2", "--val", "1", "--test", "6", "--faces", "1"]
    assert main([*args, "--jobs", "1", "--seed", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def recording(corpus, tmp_path_factory) -> tuple[Path, list[tuple[Path, str]]]:
    """About 20 s: 6 consecutive test utterances with short pauses (mouth video + wav beside it)."""
    return concatenate_utterances(corpus, tmp_path_factory.mktemp("long") / "talk", 6)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random AVSR model directory (Whisper-architecture audio, AV-HuBERT video, tiny Llama)."""
    from llama_avsr.experiment import ExperimentConfig
    from llama_avsr.model_dir import save_model_dir
    from llama_avsr.models.avsr import AVSRModel

    exp = ExperimentConfig.load(TINY)
    exp.decode = dataclasses.replace(exp.decode, max_new_tokens=3, batch_size=16, max_segment_seconds=4.0)
    torch.manual_seed(0)
    return save_model_dir(AVSRModel(exp.model), exp, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return llama_avsr.load_model(str(tiny_model_dir), device="auto")


def check_segments(result, duration: float, max_seconds: float) -> None:
    assert result.duration == pytest.approx(duration, abs=0.05)
    ends = [(s.start, s.end) for s in result.segments]
    assert ends, "no segment"
    for (_, e), (s2, _) in zip(ends, ends[1:], strict=False):
        assert e <= s2 + 1e-9, f"segments overlap or go back: {ends}"
    for s, e in ends:
        assert 0 <= s < e <= duration + 1e-6 and e - s <= max_seconds + 1e-6


# -- segmentation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_vad_segments_cover_the_speech_within_the_length_limit(speak, vad):
    sentences = ["the cat sat on the mat", "please open the window", "it is raining again today"] * 2
    pieces, spans, t = [], [], 0.0
    for i, text in enumerate(sentences):
        gap = np.zeros(int(16000 * (0.3 + 0.2 * i)), np.float32)
        wav = speak(text)
        pieces += [gap, wav]
        t += len(gap) / 16000
        loud = np.flatnonzero(np.abs(wav) > 0.02 * np.abs(wav).max())  # espeak pads with silence
        spans.append((t + loud[0] / 16000, t + loud[-1] / 16000))
        t += len(wav) / 16000
    audio = np.concatenate([*pieces, np.zeros(8000, np.float32)])
    duration = len(audio) / 16000
    segments = plan_segments(audio, duration, max_seconds=4.0, vad=vad)
    assert all(b - a <= 4.0 + 1e-9 for a, b in segments)
    assert all(0 <= a < b <= duration for a, b in segments)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(segments, segments[1:], strict=False))
    for a, b in segments:  # boundaries on video frames: audio and video cut at the same instants
        assert abs(a / FRAME - round(a / FRAME)) < 1e-6 and abs(b / FRAME - round(b / FRAME)) < 1e-6
    covered = sum(min(b, e) - max(a, s) for s, e in spans for a, b in segments if min(b, e) > max(a, s))
    assert covered >= 0.95 * sum(e - s for s, e in spans), "speech left out of the segments"
    # pauses are where cuts go: utterances are packed together up to the limit, never cut inside
    assert len(segments) < len(sentences)
    for s, e in spans:
        assert any(a <= s + 0.05 and e - 0.05 <= b for a, b in segments), f"utterance {s:.2f}-{e:.2f} cut"


def test_continuous_speech_longer_than_the_limit_is_cut_and_video_only_in_equal_pieces(speak):
    audio = np.concatenate([speak("one two three four five six seven eight nine ten eleven twelve")] * 2)
    segments = plan_segments(audio, len(audio) / 16000, max_seconds=2.5, vad="energy")
    assert len(segments) >= 3 and all(b - a <= 2.5 + 1e-9 for a, b in segments)
    pieces = plan_segments(None, 10.0, max_seconds=4.0)
    assert pieces == [(0.0, 3.32), (3.32, 6.64), (6.64, 10.0)]
    assert plan_segments(audio, 3.0, max_seconds=4.0) == [(0.0, 3.0)]  # short: whole, untouched


# -- the API ---------------------------------------------------------------------------------------------


def test_short_inputs_decode_exactly_as_the_batch_recipe(tiny, corpus):
    """A short input goes through the same samples and batch as eval does: identical transcripts."""
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.transforms import build_transforms
    from llama_avsr.decoding import generate

    clips = sorted((corpus / "synth" / "test").rglob("*.mp4"))[:3]
    results = tiny.transcribe(clips)
    assert [r.segments[0].start for r in results] == [0.0] * 3 and all(len(r.segments) == 1 for r in results)
    tf = build_transforms("test", tiny.modalities, tiny.exp.data)
    col = Collator(tiny.model.tokenizer, tiny.modalities, with_targets=False)
    for clip, r in zip(clips, results, strict=True):
        m = load_media(clip)
        audio = np.pad(m.audio, (0, max(0, len(m.video) * 640 - len(m.audio))))[: len(m.video) * 640]
        g = torch.Generator().manual_seed(0)
        sample = {
            "id": "x",
            "audio": tf["audio"](torch.from_numpy(audio), g).float(),
            "video": tf["video"](torch.from_numpy(m.video), g).float(),
        }
        assert r.text == generate(tiny.model, col([sample]), tiny.exp.decode)[0]
    # one input → one result, a list → a list; arrays, tensors and dicts work as paths do
    m = load_media(clips[0])
    assert tiny.transcribe({"audio": m.audio, "video": torch.from_numpy(m.video)}).text == results[0].text


def test_long_recording_segments_are_ordered_inside_and_reported(tiny, recording):
    mp4, items = recording
    result = tiny.transcribe(str(mp4))
    duration = load_media(mp4).duration
    assert duration > 15
    check_segments(result, duration, 4.0)
    assert len(result.segments) >= 5
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    # the random model never ends on EOS: every segment that still stops at max_new_tokens is reported
    truncated = [s for s in result.segments if s.truncated]
    assert len(result.warnings) == len(truncated) > 0
    assert all("max_new_tokens" in w for w in result.warnings)
    # video only (the audio stream blanked): the same times are cut for both streams, nothing breaks
    audio_blank = tiny.transcribe(str(mp4), streams=("video",))
    check_segments(audio_blank, duration, 4.0)


def test_segments_are_clamped_to_the_audio_encoders_window(tiny, recording, caplog):
    window = tiny.encoder_window
    assert window == 30.0  # Whisper's 30-s window (tiny-whisper architecture)
    with caplog.at_level("WARNING"):
        result = tiny.transcribe(str(recording[0]), max_segment_seconds=100, max_new_tokens=1)
    assert "window" in caplog.text
    check_segments(result, result.duration, window)


def test_media_errors_say_what_is_wrong(tiny, corpus, tmp_path):
    from llama_avsr import media

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(UnreadableMediaError, match="broken.mp4"):
        load_media(bad)
    wav = next((corpus / "synth" / "test").rglob("*.wav"))
    with pytest.raises(NoVideoError, match="audio only"):
        tiny.transcribe(str(wav))
    face = next((corpus / "raw").rglob("*.mp4"))
    frames, _ = media.read_video(face)
    media.write_video(tmp_path / "silent.mp4", frames)
    with pytest.raises(NoAudioError, match="no audio"):
        tiny.transcribe(str(tmp_path / "silent.mp4"))
    media.write_video(tmp_path / "noface.mp4", np.full((20, 240, 320), 128, np.uint8), audio=np.zeros(12800))
    with pytest.raises(NoFaceError, match="no face"):
        load_media(tmp_path / "noface.mp4")
    for e in (NoAudioError, NoFaceError, NoVideoError, UnreadableMediaError):
        assert issubclass(e, ValueError)


# -- the CLI ---------------------------------------------------------------------------------------------


def test_cli_folders_globs_outputs_and_same_text_as_the_api(
    tiny, tiny_model_dir, recording, tmp_path, capsys
):
    import srt
    import webvtt

    mp4, _ = recording
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for suffix in (".mp4", ".wav"):
        (folder / "sub" / f"talk{suffix}").write_bytes(mp4.with_suffix(suffix).read_bytes())
    (folder / "broken.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(
        ["transcribe", "--model", str(tiny_model_dir), "--json", "--output-dir", str(out)]
        + ["--output-format", "all", str(folder), str(mp4.parent / "*.mp4"), str(tmp_path / "missing.mp4")]
    )
    assert rc == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = {Path(r["file"]).name: r["error"] for r in recs if "error" in r}
    assert set(errors) == {"missing.mp4", "broken.mp4", "talk.wav"}  # the wav: this model reads video
    texts = [r for r in recs if "text" in r]
    assert len(texts) == 2  # the folder's copy and the glob's original: one line each

    api = tiny.transcribe(str(mp4))
    for r in texts:
        assert r["text"] == api.text
        assert [(s["start"], s["end"], s["text"]) for s in r["segments"]] == [
            (s.start, s.end, s.text) for s in api.segments
        ]
    # the folder's files keep their place below it (its talk.mp4 shares a name with talk.wav: suffix kept)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        *(f"sub/talk.mp4.{f}" for f in ("json", "srt", "txt", "vtt")),
        *(f"talk.{f}" for f in ("json", "srt", "txt", "vtt")),
    ]
    assert (out / "sub" / "talk.mp4.srt").read_text() == (out / "talk.srt").read_text()
    assert json.loads((out / "talk.json").read_text())["text"] == api.text
    assert (out / "talk.txt").read_text().split() == api.text.split()
    cues = [s for s in api.segments if s.text]
    subs = list(srt.parse((out / "talk.srt").read_text()))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in subs] == [
        (pytest.approx(s.start, abs=1e-3), pytest.approx(s.end, abs=1e-3), s.text) for s in cues
    ]
    vtt = webvtt.read(str(out / "talk.vtt"))
    assert [(c.start, c.end, c.text) for c in vtt] == [
        (timestamp(s.start, "."), timestamp(s.end, "."), s.text) for s in cues
    ]


def test_output_names_keep_a_folders_layout_and_never_overwrite(tmp_path):
    """LRS3's layout repeats clip names across speakers: each input gets its own output files."""
    from llama_avsr.commands.transcribe import expand_inputs, output_names
    from llama_avsr.errors import UserError

    for rel in ("lrs3/spk1/00001.mp4", "lrs3/spk2/00001.mp4", "lrs3/spk2/00001.wav", "a/x.mp4", "b/x.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found, missing = expand_inputs([str(tmp_path / "lrs3"), str(tmp_path / "a" / "x.mp4")])
    assert missing == []
    assert sorted(output_names(found).values()) == [
        "spk1/00001", "spk2/00001.mp4", "spk2/00001.wav", "x"
    ]  # fmt: skip
    found, _ = expand_inputs([str(tmp_path / "a" / "*.mp4"), str(tmp_path / "b" / "*.mp4")])
    with pytest.raises(UserError, match="x.mp4 .* would write the same output files"):
        output_names(found)
    found, _ = expand_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "x.mp4")])  # one file, given twice
    assert list(output_names(found).values()) == ["x"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["-o", "out", "-f", "srt,doc"], "--output-format: output format(s) ['doc']: choose from"),
        (["-f", "srt"], "--output-format says which files --output-dir gets: give --output-dir too"),
    ],
)
def test_cli_output_options_mistakes_are_one_line_errors(options, message, tmp_path, capsys, monkeypatch):
    """Checked before a model is loaded (the model named here does not exist)."""
    monkeypatch.chdir(tmp_path)
    args = ["transcribe", "--model", str(tmp_path / "no-model"), str(tmp_path / "a.mp4"), *options]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llama-avsr transcribe: {message}"), err
    assert "Traceback" not in err and "\n" not in err and not (tmp_path / "out").exists()


def test_writers_on_a_known_result():
    import srt
    import webvtt

    from llama_avsr.decoding import Result, Segment

    r = Result(
        "hello there general", [Segment(0.0, 1.5, "hello there"), Segment(61.04, 3725.2, "general")], 3730
    )
    assert to_srt(r).splitlines()[:3] == ["1", "00:00:00,000 --> 00:00:01,500", "hello there"]
    assert "01:02:05.200" in to_vtt(r)
    subs = list(srt.parse(to_srt(r)))
    assert [s.end.total_seconds() for s in subs] == [1.5, 3725.2]
    vtt = webvtt.from_buffer(io.StringIO(to_vtt(r)))
    assert [c.text for c in vtt] == ["hello there", "general"] and vtt[1].end == "01:02:05.200"


# -- inference without training code -------------------------------------------------------------------


def test_transcription_imports_no_training_code(tiny_model_dir, recording, corpus):
    """A mouth-ROI recording and a raw full-face video (face detection on the fly) are transcribed with
    training code blocked from import, and only the inference stages are loaded: prepare/, data/,
    models/, decoding/, the model directory and the config layer below them."""
    mp4, _ = recording
    face = next((corpus / "raw").rglob("*.mp4"))
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = ("llama_avsr.training", "lightning", "pytorch_lightning")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.startswith(BLOCKED):
                    raise ImportError(f"inference imported {{name}}")

        sys.meta_path.insert(0, Block())
        import llama_avsr.decoding
        model = llama_avsr.decoding.load_model({str(tiny_model_dir)!r}, device="cpu")
        media = llama_avsr.decoding.load_media({str(mp4)!r})
        print(len(model.transcribe(media).segments))
        print(len(model.transcribe({str(face)!r}).segments))
        print(sorted(m for m in sys.modules if m.startswith(BLOCKED)))
        print(",".join(sorted({{m.split(".")[1] for m in sys.modules if m.startswith("llama_avsr.")}})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, n_face, mods, packages = proc.stdout.strip().splitlines()[-4:]
    assert int(n) >= 5 and int(n_face) >= 1 and mods == "[]"
    stages = {"prepare", "data", "models", "decoding", "model_dir", "hub"}
    config_layer = {"config", "experiment", "media", "io", "errors", "devices", "registry", "safe_load"}
    loaded = set(packages.split(","))
    assert {"prepare", "decoding", "models", "data", "model_dir"} <= loaded
    assert loaded <= stages | config_layer, f"inference loaded {sorted(loaded - stages - config_layer)}"


# -- a model that transcribes (slow) --------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained(llama_avsr_cache):
    from longform_model import VERSION

    return build(llama_avsr_cache / "trained" / f"avsr-demo-{VERSION}")


@pytest.mark.slow
def test_long_recording_wer_close_to_utterances_one_by_one(trained, tmp_path, capsys):
    from llama_avsr.evaluation.metrics import ErrorCounts, word_errors

    model_dir, corpus = trained
    mp4, items = concatenate_utterances(corpus, tmp_path / "talk", 14)
    model = llama_avsr.load_model(str(model_dir), device="cpu")
    refs = [text for _, text in items]

    alone = model.transcribe([str(p) for p, _ in items])
    short = sum((word_errors(ref, r.text) for ref, r in zip(refs, alone, strict=True)), ErrorCounts())
    long = model.transcribe(str(mp4))
    long_wer = word_errors(" ".join(refs), long.text).rate
    duration = load_media(mp4).duration
    max_seg = model.exp.decode.max_segment_seconds
    check_segments(long, duration, max_seg)
    assert len(long.segments) >= len(items) // 2
    print(f"WER one by one {short.rate:.3f}, long recording {long_wer:.3f}, {len(long.segments)} segments")  # noqa: T201
    # the fixture's 250 steps of the demo recipe (fp32 on an AVX2 CPU, modality dropout) measured 0.63
    # one by one on 2026-12-01 (5b95870) and 0.75 after the lip encoder's centring and the new renderer
    # (2e598b2, long recording 0.82); a model at chance (WER near 1) would make the 1.5x comparison below
    # say nothing, so the guard sits between the two
    assert short.rate < 0.9, "the test model does not transcribe"
    assert long_wer <= 1.5 * short.rate + 0.01

    capsys.readouterr()
    assert main(["transcribe", "--model", str(model_dir), "--json", "--device", "cpu", str(mp4)]) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rec["text"] == long.text


def test_a_long_silent_recording_reports_no_speech(tiny):
    silent = {"audio": np.zeros(16000 * 10, np.float32), "video": np.zeros((250, 96, 96), np.uint8)}
    result = tiny.transcribe(silent, vad="energy")
    assert result.segments == [] and result.text == "" and "no speech" in result.warnings[0]
