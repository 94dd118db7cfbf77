"""The synthetic corpus generator: layout and label format, determinism, split guarantees, lip/speech
synchrony, full-face raw videos, babble noise and the ``synth`` command."""

from __future__ import annotations

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from llama_avsr import media
from llama_avsr.synth import babble, grammar, lips, tts
from llama_avsr.synth.corpus import MANIFEST, SynthConfig, generate

pytestmark = pytest.mark.skipif(
    not tts.available(), reason="libespeak-ng is not installed (apt-get install espeak-ng)"
)

COUNTS = {"train": 8, "val": 2, "test": 4}
N_FACES = 1


def _config(out: Path, jobs: int) -> SynthConfig:
    return SynthConfig(
        out=out, n_train=COUNTS["train"], n_val=COUNTS["val"], n_test=COUNTS["test"],
        n_faces=N_FACES, seed=3, jobs=jobs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dozen-utterance corpus made with two worker processes."""
    out = tmp_path_factory.mktemp("synth_a")
    generate(_config(out, jobs=2))
    return out


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same corpus made again, in this process."""
    out = tmp_path_factory.mktemp("synth_b")
    generate(_config(out, jobs=1))
    return out


def _rows(root: Path, split: str) -> list[list[str]]:
    with open(root / "labels" / f"synth_{split}.csv", newline="") as f:
        return list(csv.reader(f))


def test_layout_and_label_csv(corpus: Path) -> None:
    vocab = grammar.vocabulary()
    for split, n in COUNTS.items():
        rows = _rows(corpus, split)
        assert len(rows) == n
        for dataset, rel, n_frames, ids, text in rows:  # exactly five fields
            assert dataset == "synth"
            assert rel.startswith(f"{split}/spk") and rel.endswith(".mp4") and len(Path(rel).stem) == 5
            assert text == text.lower() and "," not in text
            assert [vocab[int(i)] for i in ids.split()] == text.split()
            video = corpus / "synth" / rel
            frames, fps = media.read_video(video, gray=True)
            assert frames.shape == (int(n_frames), 96, 96) and fps == pytest.approx(25.0)
            with wave.open(str(video.with_suffix(".wav"))) as w:
                assert (w.getframerate(), w.getnchannels()) == (16_000, 1)
                assert w.getnframes() / 16_000 == pytest.approx(int(n_frames) / 25, abs=1e-3)
    manifest = json.loads((corpus / MANIFEST).read_text())
    assert manifest["seed"] == 3 and manifest["counts"] == {**COUNTS, "faces": N_FACES}
    assert manifest["vocab"] == vocab and 250 <= len(vocab) <= 300


def test_same_seed_same_corpus(corpus: Path, corpus_again: Path) -> None:
    """Text, audio bytes and label files are identical; --jobs does not matter."""
    for split in COUNTS:
        assert (corpus / "labels" / f"synth_{split}.csv").read_bytes() == (
            corpus_again / "labels" / f"synth_{split}.csv"
        ).read_bytes()
    wavs = sorted((corpus / "synth").rglob("*.wav"))
    assert len(wavs) == sum(COUNTS.values())
    for wav in wavs:
        assert wav.read_bytes() == (corpus_again / wav.relative_to(corpus)).read_bytes(), wav
    # The rendered frames are identical (test_rendering_is_deterministic); the decoded videos agree up
    # to encoder noise: PyAV's rgb24 → yuv420p conversion inside media.write_video is not bit-exact
    # from run to run (feeding yuv420p frames is), and x264 propagates a differing pixel through P-frames.
    for video in sorted((corpus / "synth").rglob("*.mp4"))[:4]:
        a, _ = media.read_video(video, gray=True)
        b, _ = media.read_video(corpus_again / video.relative_to(corpus), gray=True)
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 4.0


def test_rendering_is_deterministic() -> None:
    speech = tts.synthesize("alice moved the red box.", tts.SPEAKERS[0].voice)
    track = lips.viseme_track(speech.phonemes, 40)
    app = lips.Appearance.sample(np.random.default_rng(1))
    a = lips.render_roi(track, app, np.random.default_rng(5))
    b = lips.render_roi(track, app, np.random.default_rng(5))
    assert a.shape == (40, 96, 96) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_espeak_is_reproducible_whatever_came_before() -> None:
    voice = tts.SPEAKERS[1].voice
    first = tts.synthesize("did bob paint the green kite today?", voice)
    tts.synthesize("something else entirely", tts.SPEAKERS[4].voice, seed=9)
    again = tts.synthesize("did bob paint the green kite today?", voice)
    assert np.array_equal(first.audio, again.audio) and first.phonemes == again.phonemes


def test_splits_unseen_sentences_and_combinations() -> None:
    splits = grammar.make_splits(600, 50, 80, seed=5)
    texts = {k: [s.text for s in v] for k, v in splits.items()}
    assert not set(texts["test"]) & set(texts["train"]) and not set(texts["val"]) & set(texts["train"])
    held = grammar.held_out_pairs(5)
    assert not any(grammar.contains_pair(t, held) for t in texts["train"] + texts["val"])
    assert sum(grammar.contains_pair(t, held) for t in texts["test"]) >= 20
    # deterministic, and the test split does not depend on the size of the training split
    assert texts == {k: [s.text for s in v] for k, v in grammar.make_splits(600, 50, 80, seed=5).items()}
    assert [s.text for s in grammar.make_splits(10, 50, 80, seed=5)["test"]] == texts["test"]


def _speakers(rows: list[list[str]]) -> set[str]:
    return {r[1].split("/")[1] for r in rows}


def test_splits_are_disjoint_in_sentences_voices_and_noise_talkers(corpus: Path) -> None:
    rows = {split: _rows(corpus, split) for split in COUNTS}
    # sentences: no sentence in two splits
    texts = {split: {r[4] for r in rs} for split, rs in rows.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    # voices: each evaluation split has held-out voices of its own, never heard in training or in
    # the other evaluation split; the rest are training voices
    manifest = json.loads((corpus / MANIFEST).read_text())
    held = {s: set(ids) for s, ids in manifest["held_out_speakers"].items()}
    assert held == {s: {sp.id for sp in tts.SPEAKERS if sp.held_out == s} for s in ("val", "test")}
    assert held["val"] and held["test"] and not held["val"] & held["test"]
    train = {sp["id"] for sp in manifest["speakers"]["train"]}  # the training voices
    assert _speakers(rows["train"]) <= train
    for split in ("val", "test"):
        assert held[split] <= _speakers(rows[split])  # even a tiny split has them (they come first)
        assert not train & held[split]
        assert _speakers(rows[split]) <= train | held[split]
    assert set(manifest["unseen_speakers"]) == held["test"]
    by_id = {sp["id"]: sp["name"] for split in manifest["speakers"].values() for sp in split}
    train_voices = {by_id[s] for s in train}
    assert not train_voices & {by_id[s] for s in held["val"] | held["test"]}
    assert not {by_id[s] for s in held["val"]} & {by_id[s] for s in held["test"]}
    # noise: the training and evaluation babble tracks have no talker in common, nor a corpus voice
    talkers = manifest["babble_talkers"]
    assert len(set(talkers["train"])) == len(talkers["train"]) == babble.BABBLE_VOICES
    assert not set(talkers["train"]) & set(talkers["eval"])
    assert not (set(talkers["train"]) | set(talkers["eval"])) & {sp.voice.name for sp in tts.SPEAKERS}
    for seed in range(5):  # whatever the seed
        a, b = (babble.babble_voices(babble.BABBLE_VOICES, t, seed) for t in babble.TRACKS)
        assert not {v.name for v in a} & {v.name for v in b}


def test_phoneme_timings_monotonic_and_within_audio() -> None:
    speech = tts.synthesize("please fix the golden clock under the stairs carefully.", tts.SPEAKERS[3].voice)
    assert speech.sample_rate == 16_000 and 1.5 < speech.duration < 5.0
    starts = [s for _, s, _ in speech.phonemes]
    assert len(starts) > 20 and starts == sorted(starts)
    assert all(0 <= s <= e <= speech.duration + 1e-6 for _, s, e in speech.phonemes)
    assert all(
        a[2] == pytest.approx(b[1]) for a, b in zip(speech.phonemes, speech.phonemes[1:], strict=False)
    )
    words = speech.words
    assert [i for i, _ in words] == list(range(9)) and [t for _, t in words] == sorted(t for _, t in words)
    padded = speech.padded(0.3, speech.duration + 0.6)
    ph = padded.phonemes
    assert ph[0][0] == "_" and ph[0][1] == 0.0 and ph[0][2] >= 0.3
    assert all(a[2] == pytest.approx(b[1]) for a, b in zip(ph, ph[1:], strict=False))
    assert ph[-1][2] == pytest.approx(padded.duration, abs=1e-3)


def test_mouth_opening_follows_speech_energy(corpus: Path) -> None:
    """Darkness of the mouth region (the open cavity) rises and falls with the audio RMS envelope."""
    corrs = []
    for _, rel, n, _, _ in _rows(corpus, "train") + _rows(corpus, "test"):
        frames, _ = media.read_video(corpus / "synth" / rel, gray=True)
        audio = media.read_audio((corpus / "synth" / rel).with_suffix(".wav"))
        n = int(n)
        rms = np.sqrt((audio[: n * 640].reshape(n, 640) ** 2).mean(axis=1))
        darkness = 255.0 - frames[:, 30:80, 15:81].astype(np.float32).mean(axis=(1, 2))
        corrs.append(np.corrcoef(darkness, rms)[0, 1])
    assert np.mean(corrs) > 0.25, corrs


def test_face_videos_with_audio_and_transcript(corpus: Path) -> None:
    manifest = json.loads((corpus / MANIFEST).read_text())
    assert len(manifest["faces"]) == N_FACES
    face = manifest["faces"][0]
    video = corpus / face["video"]
    frames, fps = media.read_video(video)
    assert fps == pytest.approx(30.0) and frames.shape[1:] == (240, 320, 3)
    audio = media.read_audio(video)
    assert abs(len(audio) / 16_000 - len(frames) / fps) < 0.1 and np.abs(audio).max() > 0.05
    txt = (corpus / face["transcript"]).read_text().splitlines()
    assert txt[0] == "Text:  " + face["text"].upper()
    assert face["text"] in {r[4] for r in _rows(corpus, "test")}
    mp = pytest.importorskip("mediapipe")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = [mesh.process(np.ascontiguousarray(f)).multi_face_landmarks is not None for f in frames[::15]]
    assert all(found)


def test_babble(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = babble.make_babble(tmp_path / "b.wav", seconds=4.0, n_voices=4, seed=1)
    audio = media.read_audio(path)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16_000 and w.getnchannels() == 1
    assert len(audio) == 64_000
    rms = np.sqrt(np.mean(audio**2))
    assert 0.05 < rms < 0.2 and np.abs(audio).max() < 1.0
    # no long silent stretch: several talkers overlap
    frame_rms = np.sqrt((audio[: 64_000 // 400 * 400].reshape(-1, 400) ** 2).mean(axis=1))
    assert (frame_rms > 0.01).mean() > 0.9
    # cached default tracks, each made once; the evaluation track is another mix
    monkeypatch.setenv("LLAMA_AVSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(babble, "BABBLE_SECONDS", 3.0)
    monkeypatch.setattr(babble, "BABBLE_VOICES", 3)
    first = babble.default_babble_path()
    assert first.is_file() and first.parent == tmp_path / "cache"
    stamp = first.stat().st_mtime_ns
    assert babble.default_babble_path() == first and first.stat().st_mtime_ns == stamp
    assert len(media.read_audio(first)) == 48_000
    other = babble.default_babble_path("eval")
    assert other != first and not np.array_equal(media.read_audio(other), media.read_audio(first))
    with pytest.raises(ValueError):
        babble.default_babble_path("test")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llama_avsr.cli import main

    with pytest.raises(SystemExit) as e:
        main(["synth", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--out", "--train", "--val", "--test", "--faces", "--seed", "--jobs", "--dataset"):
        assert opt in help_text
    out = tmp_path / "c"
    argv = [
        "synth",
        "--out",
        str(out),
        "--train",
        "2",
        "--val",
        "1",
        "--test",
        "1",
        "--faces",
        "0",
        "--jobs",
        "1",
    ]
    assert main([*argv, "--seed", "7", "--dataset", "mini"]) == 0
    assert len(_csv(out / "labels" / "mini_train.csv")) == 2
    assert json.loads((out / MANIFEST).read_text())["seed"] == 7
    assert main(["synth", "--out", str(out), "--test", "1", "--faces", "2"]) == 1  # more faces than tests


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))
