"""prepare: landmark → ROI functions, the corpus pipeline on a moving real face, bad inputs, resume, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from llama_avsr import media
from llama_avsr.cli import main
from llama_avsr.prepare import detectors, roi
from llama_avsr.prepare.pipeline import (
    REASONS,
    PrepareError,
    PrepareOptions,
    RoiConfig,
    collect_inputs,
    normalize_text,
    prepare_corpus,
    prepare_video,
    read_transcript,
)

skimage_data = pytest.importorskip("skimage.data")

FPS_IN = 30
N_IN = 36  # 1.2 s at 30 fps → 30 frames at 25 fps
N_OUT = 30
SIZE = (320, 240)  # (W, H)
AUDIO_SR = 44_100


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def _motion(t: int) -> np.ndarray:
    """Photo → frame similarity at frame t (2, 3): the face drifts, zooms in 1.0 → 1.3 and tilts 6°."""
    u = t / (N_IN - 1)
    s, ang = 1.0 + 0.3 * u, np.deg2rad(6.0 * u)
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    centre = np.array([150.0 + 25.0 * u, 115.0 + 10.0 * np.sin(np.pi * u)])
    face = np.array([225.0, 135.0])  # roughly the face centre in astronaut()
    return np.hstack([rot, (centre - rot @ face)[:, None]])


def _sine(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_SR)) / AUDIO_SR
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage_data.astronaut()  # (512, 512, 3) RGB, a real face


@pytest.fixture(scope="module")
def moving_frames(photo: np.ndarray) -> np.ndarray:
    return np.stack([cv2.warpAffine(photo, _motion(t), SIZE, borderValue=(0, 0, 0)) for t in range(N_IN)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, moving_frames: np.ndarray) -> dict[str, object]:
    """good.mp4 (+ transcript), and one file for every kind of bad input."""
    d = tmp_path_factory.mktemp("raw")
    audio = _sine(N_IN / FPS_IN)
    (d / "spk1").mkdir()
    good = d / "spk1" / "good.mp4"
    media.write_video(good, moving_frames, FPS_IN, audio=audio, sample_rate=AUDIO_SR)
    (d / "spk1" / "good.txt").write_text("Hello, World! It's a well-known test.\n")
    gray = np.full_like(moving_frames, 128)
    media.write_video(d / "noface.mp4", gray, FPS_IN, audio=audio, sample_rate=AUDIO_SR)
    few = moving_frames.copy()
    few[: int(0.8 * N_IN)] = 128  # a face in the last 20 % of the frames only
    media.write_video(d / "fewfaces.mp4", few, FPS_IN, audio=audio, sample_rate=AUDIO_SR)
    media.write_video(d / "silent.mp4", moving_frames, FPS_IN)  # no audio track
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"dir": d, "good": good}


@pytest.fixture(scope="module")
def detector() -> detectors.Detector:
    return detectors.build_detector(RoiConfig().detector)


def _backend(name: str) -> detectors.Detector:
    try:
        return detectors.build_detector(name)
    except detectors.DetectorUnavailable as e:
        pytest.skip(str(e))


# -- pure landmark → ROI functions ----------------------------------------------------------------------


def test_interpolate_landmarks_fills_gaps_and_ends() -> None:
    a, b = np.zeros((4, 2)), np.full((4, 2), 3.0)
    out = roi.interpolate_landmarks([None, a, None, None, b, None])
    assert out.shape == (6, 4, 2)
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 1, 2, 3, 3])
    with pytest.raises(ValueError, match="no frame"):
        roi.interpolate_landmarks([None, None])


def test_smoothing_keeps_position_and_averages_shape() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 2)) * 10
    drift = np.arange(20)[:, None, None] * np.array([2.0, -1.0])  # pure translation
    lm = base + drift
    np.testing.assert_allclose(roi.smooth_landmarks(lm), lm, atol=1e-9)  # translation is not smoothed
    jitter = lm + rng.normal(size=lm.shape)
    sm = roi.smooth_landmarks(jitter)
    np.testing.assert_allclose(sm.mean(1), jitter.mean(1), atol=1e-9)  # centroid follows the frame
    assert np.abs(sm - lm).std() < np.abs(jitter - lm).std()


def test_roi_of_the_mean_face_is_centred_on_its_mouth() -> None:
    mf = roi.load_mean_face()
    assert mf.shape == (68, 2)
    m = roi.roi_transforms(mf[None], roi.IBUG68)[0]
    mouth = mf[48:68].mean(0) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(m[:, :2], np.eye(2), atol=1e-6)
    np.testing.assert_allclose(mouth, [48, 48], atol=0.51)  # origin rounded to whole pixels


def test_roi_is_invariant_to_a_similarity_of_the_frame(photo: np.ndarray) -> None:
    det = _backend("mediapipe")
    lm = det.detect(photo)
    assert lm is not None and lm.shape == (4, 2)
    still = roi.crop_mouth_rois(photo[None], lm[None], det.scheme)[0]
    a = _motion(N_IN - 1)
    moved = cv2.warpAffine(photo, a, SIZE)
    lm_moved = lm @ a[:, :2].T + a[:, 2]  # the same landmarks through the known motion, no detection
    out = roi.crop_mouth_rois(moved[None], lm_moved[None], det.scheme)[0]
    assert out.shape == (96, 96) and out.dtype == np.uint8
    assert _ncc(out, still) > 0.95


# -- detectors -----------------------------------------------------------------------------------------


def test_registry_lists_backends() -> None:
    assert {"mediapipe", "dlib"} <= set(detectors.DETECTORS)
    with pytest.raises(KeyError, match="unknown face detector"):
        detectors.build_detector("nope")


def test_default_crop_is_centred_on_the_mouth_by_an_independent_detector(
    photo: np.ndarray, detector: detectors.Detector
) -> None:
    """The default backend's crop of the still photo against dlib's 68-point mouth centre."""
    lm = detector.detect(photo)
    assert lm is not None and lm.shape == (detector.scheme.num_points, 2)
    m = roi.roi_transforms(lm[None], detector.scheme)[0]
    np.testing.assert_allclose(
        lm[list(detector.scheme.mouth_points)].mean(0) @ m[:, :2].T + m[:, 2], [48, 48], atol=0.51
    )
    lm68 = _backend("dlib").detect(photo)
    assert lm68 is not None and lm68.shape == (68, 2)
    mouth = lm68[48:68].mean(0) @ m[:, :2].T + m[:, 2]
    assert np.abs(mouth - 48).max() < 4, mouth


@pytest.mark.parametrize(
    ("backend", "max_error", "max_zoom_error"),
    [("mediapipe-mesh", 2.0, 0.02), ("dlib", 2.0, 0.05), ("mediapipe", 10.0, 0.1)],
)
def test_crop_follows_the_moving_mouth(
    photo: np.ndarray, moving_frames: np.ndarray, backend: str, max_error: float, max_zoom_error: float
) -> None:
    """Detected on every frame of a face that drifts, zooms 1.0 → 1.3 and tilts 6°, the crop must stay on
    the mouth (the still photo's mouth centre carried through the known motion lands at the crop centre)
    and at the scale of the still photo's crop."""
    det = _backend(backend)
    idx = media.resample_frames(np.arange(N_IN), FPS_IN, 25)  # source frame of each output frame
    frames = moving_frames[idx]
    lm = det.detect(photo)
    mouth = lm[list(det.scheme.mouth_points)].mean(0)
    still = roi.roi_transforms(lm[None], det.scheme)[0]
    zoom0 = np.sqrt(np.linalg.det(still[:, :2]))
    found = det.detect_video(frames)
    assert all(f is not None for f in found)
    maps = roi.roi_transforms(roi.interpolate_landmarks(found), det.scheme)
    for t, m in zip(idx, maps, strict=True):
        a = _motion(t)
        at = m[:, :2] @ (a[:, :2] @ mouth + a[:, 2]) + m[:, 2]
        assert np.abs(at - 48).max() < max_error, (t, at)
        zoom = np.sqrt(np.linalg.det(m[:, :2] @ a[:, :2]))
        assert abs(zoom / zoom0 - 1) < max_zoom_error, (t, zoom / zoom0)


# -- one video -------------------------------------------------------------------------------------------


def test_prepare_video(videos: dict, photo: np.ndarray, detector: detectors.Detector) -> None:
    rois, audio = prepare_video(videos["good"], detector)
    assert rois.shape == (N_OUT, 96, 96) and rois.dtype == np.uint8
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - N_IN / FPS_IN * 16_000) < 0.05 * 16_000
    # = the pure function on the decoded, resampled frames and their landmarks
    frames, fps = media.read_video(videos["good"])
    frames = media.resample_frames(frames, fps, 25)
    lms = roi.interpolate_landmarks(detector.detect_video(frames))
    np.testing.assert_array_equal(rois, roi.crop_mouth_rois(frames, lms, detector.scheme))
    # the crop is aligned to the face, so every frame looks like the crop of the still photo
    still = roi.crop_mouth_rois(photo[None], detector.detect(photo)[None], detector.scheme)[0]
    scores = [_ncc(r, still) for r in rois]
    assert min(scores) > 0.9, scores


def test_normalize_text_and_transcripts(tmp_path) -> None:
    assert normalize_text("Hello, World! It's a well-known TEST.") == "hello world it's a well known test"
    v = tmp_path / "a.mp4"
    assert read_transcript(v) is None
    (tmp_path / "a.txt").write_text(
        "Text:  SO, WE WENT THERE\nConf:  3\n\nWORD START END ASDSCORE\nSO 0.1 0.2 1\n"
    )
    assert read_transcript(v) == "so we went there"


# -- the corpus pipeline -------------------------------------------------------------------------------


def _options(out, **kw) -> PrepareOptions:
    return PrepareOptions(out=out, dataset="mine", **kw)


def test_corpus_layout_resume_and_skips(videos: dict, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "corpus"
    raw = videos["dir"]
    caplog.set_level("INFO", logger="llama_avsr")
    report = prepare_corpus([raw], _options(out), progress=False)
    by_name = {os.path.basename(r.src): r for r in report.items}
    assert report.counts() == {"done": 1, "exists": 0, "skipped": 5}
    assert by_name["good.mp4"].status == "done"
    expected = {
        "corrupt.mp4": "unreadable",
        "empty.mp4": "unreadable",
        "silent.mp4": "no_audio",
        "noface.mp4": "no_face",
        "fewfaces.mp4": "too_few_faces",
    }
    for name, reason in expected.items():
        r = by_name[name]
        assert (r.status, r.reason) == ("skipped", reason), r
        assert reason in REASONS
        assert str(raw / name) in r.message
        assert name in caplog.text  # the clear message is logged, naming the file
        assert not (out / "mine" / name).exists()

    mp4, wav = out / "mine" / "spk1" / "good.mp4", out / "mine" / "spk1" / "good.wav"
    frames, fps = media.read_video(mp4, gray=True)
    assert frames.shape == (N_OUT, 96, 96) and abs(fps - 25.0) < 1e-6
    assert abs(len(media.read_audio(wav)) - N_IN / FPS_IN * 16_000) < 0.05 * 16_000
    import wave

    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels()) == (16_000, 1)

    csv = (out / "labels" / "mine.csv").read_text().splitlines()
    assert csv == [f"mine,spk1/good.mp4,{N_OUT},0,hello world it's a well known test"]
    js = json.loads((out / "labels" / "mine.prepare.json").read_text())
    assert js["counts"]["skipped"] == 5 and js["skipped_by_reason"]["unreadable"] == 2

    # the corpus reader accepts what we wrote
    from llama_avsr.data.corpus import read_labels

    utts, problems = read_labels(out / "labels" / "mine.csv", out)
    assert not problems and len(utts) == 1 and utts[0].n_frames == N_OUT and utts[0].video == mp4

    # resume: the done file is not redone and the CSV is the same
    stamp = mp4.stat().st_mtime_ns
    again = prepare_corpus([raw], _options(out), progress=False)
    assert again.counts() == {"done": 0, "exists": 1, "skipped": 5}
    assert mp4.stat().st_mtime_ns == stamp
    assert (out / "labels" / "mine.csv").read_text().splitlines() == csv

    # a run killed while writing leaves only a hidden temp file: the item is redone and the temp removed
    mp4.unlink()
    stale = mp4.parent / ".good.abcd_123.mp4"
    stale.write_bytes(b"partial")
    third = prepare_corpus([raw / "spk1" / "good.mp4"], _options(out), root=raw, progress=False)
    assert third.counts()["done"] == 1 and mp4.is_file() and not stale.exists()


def test_allow_no_audio_writes_video_only(videos: dict, tmp_path) -> None:
    out = tmp_path / "c"
    report = prepare_corpus(
        [videos["dir"] / "silent.mp4"], _options(out, allow_no_audio=True), progress=False
    )
    assert report.counts()["done"] == 1
    assert (out / "mine" / "silent.mp4").is_file() and not (out / "mine" / "silent.wav").exists()
    assert (out / "labels" / "mine.csv").read_text() == f"mine,silent.mp4,{N_OUT},0,\n"  # no transcript


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt.mp4", "unreadable"),
        ("empty.mp4", "unreadable"),
        ("silent.mp4", "no_audio"),
        ("noface.mp4", "no_face"),
    ],
)
def test_fail_fast_raises(videos: dict, tmp_path, name: str, reason: str) -> None:
    with pytest.raises(PrepareError, match=name) as e:
        prepare_corpus([videos["dir"] / name], _options(tmp_path, fail_fast=True), progress=False)
    assert e.value.reason == reason


def test_max_missing_threshold(videos: dict, detector: detectors.Detector) -> None:
    with pytest.raises(PrepareError, match="only"):
        prepare_video(videos["dir"] / "fewfaces.mp4", detector)
    rois, _ = prepare_video(videos["dir"] / "fewfaces.mp4", detector, RoiConfig(max_missing=0.9))
    assert rois.shape == (N_OUT, 96, 96)


def test_collect_inputs_rejects_collisions(videos: dict, tmp_path) -> None:
    (tmp_path / "good.mkv").write_bytes(b"x")
    with pytest.raises(ValueError, match="both be written"):
        collect_inputs([videos["good"], tmp_path / "good.mkv"])
    with pytest.raises(ValueError, match="not found"):
        collect_inputs([tmp_path / "missing.mp4"])


# -- command line ----------------------------------------------------------------------------------------


def test_cli_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--allow-no-audio" in text and "--fail-fast" in text and "--jobs" in text


def test_cli_runs_a_process_pool(videos: dict, tmp_path) -> None:
    raw = videos["dir"]
    out = tmp_path / "cli"
    args = [
        "prepare",
        str(raw / "spk1"),
        str(raw / "noface.mp4"),
        "-o",
        str(out),
        "--dataset",
        "d",
        "-j",
        "2",
    ]
    assert main([*args, "--no-progress", "--split-ratio", "1,0,0"]) == 0
    assert (out / "d" / "good.mp4").is_file()
    js = json.loads((out / "labels" / "d.prepare.json").read_text())
    assert js["counts"] == {"done": 1, "exists": 0, "skipped": 1}
    # the split files are written beside the label CSV (the only speaker goes to train)
    train_csv = (out / "labels" / "d_train.csv").read_text().splitlines()
    assert len(train_csv) == 1 and train_csv[0].split(",")[1].endswith("good.mp4")
    # --fail-fast: stops with exit status 1 (in one process, to keep the test short)
    assert main([*args[:-2], "--no-progress", "--fail-fast", "--overwrite"]) == 1


def test_second_prepare_into_a_dataset_merges_into_its_labels(videos: dict, tmp_path) -> None:
    import shutil

    out = tmp_path / "corpus"
    more = tmp_path / "more"
    (more / "spk2").mkdir(parents=True)
    shutil.copy(videos["good"], more / "spk2" / "again.mp4")
    prepare_corpus([videos["good"]], _options(out), root=videos["dir"], progress=False)
    prepare_corpus([more / "spk2" / "again.mp4"], _options(out), root=more, progress=False)
    lines = (out / "labels" / "mine.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in lines] == ["spk1/good.mp4", "spk2/again.mp4"]
    assert lines[0].endswith(",hello world it's a well known test")  # the first run's line, unchanged


def test_concurrent_prepare_into_one_dataset_is_refused(videos: dict, tmp_path) -> None:
    import subprocess
    import sys

    from llama_avsr.io import LockedError

    out = tmp_path / "corpus"
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")])),
    }
    holder = subprocess.Popen(
        [sys.executable, str(repo / "tests" / "helpers" / "hold_lock.py"), str(out / "mine")],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "LOCKED"  # the other writer holds the dataset
        with pytest.raises(LockedError, match="already writing"):
            prepare_corpus([videos["good"]], _options(out), root=videos["dir"], progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "labels" / "mine.csv").exists()
