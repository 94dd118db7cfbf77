"""Label CSV parsing, utterances from user files, DataConfig."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llama_avsr import media
from llama_avsr.data.config import DataConfig
from llama_avsr.data.corpus import (
    LabelError,
    PackedUtterances,
    Utterance,
    read_labels,
    utterance_from_file,
    utterances_from_files,
)

PUBLISHED = "lrs3_video_seg16s,test/0Fi83BHQsMA/00002.mp4,85,1 2 3,some words here"


def test_published_line(tmp_path: Path) -> None:
    csv = tmp_path / "test.csv"
    csv.write_text(PUBLISHED + "\n")
    utts, problems = read_labels(csv, tmp_path / "root")
    assert problems == []
    (u,) = utts
    assert u.id == "lrs3_video_seg16s/test/0Fi83BHQsMA/00002"
    assert u.video == tmp_path / "root/lrs3_video_seg16s/test/0Fi83BHQsMA/00002.mp4"
    assert u.audio == tmp_path / "root/lrs3_video_seg16s/test/0Fi83BHQsMA/00002.wav"
    assert u.n_frames == 85
    assert u.text == "some words here"


def test_commas_in_text_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_bytes(
        b"\xef\xbb\xbfd,a/1.mp4,10,5 6,hello, world\r\n\r\nd,a/2.mp4,20,,second one\r\n   \nd,a/3.mp4,3,7,\n"
    )
    utts, problems = read_labels(csv, tmp_path)
    assert problems == []
    assert [u.text for u in utts] == ["hello, world", "second one", ""]
    assert [u.n_frames for u in utts] == [10, 20, 3]
    assert utts[0].id == "d/a/1"


BAD_LINES = [
    (b"d,a/1.mp4,10,1 2", "expected 5"),  # four fields (auto_avsr's own format)
    (b"d,a/2.mp4,ten,1,text", "not an integer"),
    (b"d,a/3.mp4,0,1,text", "positive"),
    (b"d,,10,1,text", "empty"),
    (b"d,a/4.mp4,10,1,caf\xe9 au lait", "UTF-8"),  # latin-1 byte
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_reported_and_skipped(tmp_path: Path, line: bytes, reason: str) -> None:
    csv = tmp_path / "l.csv"
    csv.write_bytes(b"d,ok/1.mp4,10,1,good\n" + line + b"\nd,ok/2.mp4,12,1,also good\n")
    utts, problems = read_labels(csv, tmp_path)
    assert [u.id for u in utts] == ["d/ok/1", "d/ok/2"]
    (p,) = problems
    assert p.where == f"{csv}:2"
    assert reason in p.reason
    assert str(p).startswith(f"{csv}:2: ")
    with pytest.raises(LabelError, match=f"{csv}:2: .*{reason}"):
        read_labels(csv, tmp_path, strict=True)


def test_duplicate_and_missing_csv(tmp_path: Path) -> None:
    csv = tmp_path / "l.csv"
    csv.write_text("d,a/1.mp4,10,1,x\nd,a/1.mp4,10,1,x\n")
    utts, problems = read_labels(csv, tmp_path)
    assert len(utts) == 1 and "duplicate" in problems[0].reason
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_labels(tmp_path / "nope.csv", tmp_path)


def test_audio_source_falls_back_to_video_track(tmp_path: Path) -> None:
    u = Utterance("x", video=tmp_path / "x.mp4", audio=tmp_path / "x.wav", n_frames=3)
    assert u.audio_source() == tmp_path / "x.mp4"
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    assert u.audio_source() == tmp_path / "x.wav"
    assert (
        Utterance("y", video=None, audio=tmp_path / "y.wav", n_frames=1).audio_source() == tmp_path / "y.wav"
    )


def test_utterances_from_user_files(tmp_path: Path) -> None:
    frames = np.full((30, 96, 96), 128, np.uint8)
    media.write_video(tmp_path / "clip.mp4", frames, fps=30)  # 1 s at 30 fps → 25 frames at 25 fps
    media.write_wav(tmp_path / "speech.wav", np.zeros(16000 + 100, np.float32))
    media.write_wav(tmp_path / "sub/clip.wav", np.zeros(100, np.float32))
    v = utterance_from_file(tmp_path / "clip.mp4", text="hi")
    assert v.video == tmp_path / "clip.mp4" and v.audio == tmp_path / "clip.wav"
    assert v.n_frames == 25 and v.text == "hi" and v.id == "clip"
    a = utterance_from_file(tmp_path / "speech.wav", id="s1")
    assert a.video is None and a.audio == tmp_path / "speech.wav"
    assert a.n_frames == 26 and a.id == "s1"  # ceil(16100 / 640)
    both = utterances_from_files([tmp_path / "clip.mp4", tmp_path / "sub/clip.wav"])
    assert [u.id for u in both] == ["clip", "clip-1"]
    with pytest.raises(media.MediaError, match="missing.mp4"):
        utterance_from_file(tmp_path / "missing.mp4")


def test_data_config(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/train.csv").write_text(PUBLISHED)
    cfg = DataConfig(root=str(tmp_path), train_csv="train.csv", test_csv=str(tmp_path / "t.csv"))
    assert cfg.csv_path("train") == tmp_path / "labels/train.csv"
    assert cfg.csv_path("test") == tmp_path / "t.csv"
    assert cfg.train_snrs == [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, None]
    with pytest.raises(ValueError, match="val_csv"):
        cfg.csv_path("val")
    for bad in ({"max_frames": 0}, {"on_error": "ignore"}, {"num_buckets": 0}, {"max_batch_size": 0}):
        with pytest.raises(ValueError):
            DataConfig(**bad)


def test_data_config_from_yaml_dict() -> None:
    from llama_avsr.config import from_dict

    cfg = from_dict(
        DataConfig, {"train_snrs": [0, None, "5"], "decode_snr_target": 5, "max_batch_size": None}
    )
    assert cfg.train_snrs == [0.0, None, 5.0]
    assert cfg.decode_snr_target == 5.0


def test_packed_utterances_round_trip(tmp_path: Path) -> None:
    utts = [
        Utterance("a/1", tmp_path / "a/1.mp4", tmp_path / "a/1.wav", 10, "héllo wörld"),
        Utterance("b", None, tmp_path / "b.flac", 3, ""),
        Utterance("c", tmp_path / "c.mp4", None, 7, "x"),
    ]
    packed = PackedUtterances(utts)
    assert len(packed) == 3 and list(packed) == utts
    assert packed[-1] == utts[-1] and packed[0:2] == utts[:2]
    assert packed.n_frames.tolist() == [10, 3, 7]
    with pytest.raises(IndexError):
        packed[3]
    assert len(PackedUtterances([])) == 0
