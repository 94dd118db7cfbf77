"""Train / val / test label files from a prepared CSV: split file, first folder, or ratio with speakers
kept apart; the length filter drops long train/val utterances and leaves test whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_avsr.prepare import splits


def _csv(tmp_path: Path, rows: list[tuple[str, int]]) -> Path:
    csv = tmp_path / "labels" / "mine.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("".join(f"mine,{rel},{frames},0,text of {rel}\n" for rel, frames in rows))
    return csv


def test_by_ratio_keeps_each_speaker_in_one_split_and_is_deterministic():
    rel = [f"clips/spk{s:02d}/{u:05d}.mp4" for s in range(20) for u in range(1 + s % 4)]
    a = splits.by_ratio(rel, (0.8, 0.1, 0.1), seed=3)
    assert a == splits.by_ratio(rel, (0.8, 0.1, 0.1), seed=3) != splits.by_ratio(rel, (0.8, 0.1, 0.1), seed=4)
    assert set(a) == set(rel)
    per_speaker: dict[str, set[str]] = {}
    for r, s in a.items():
        per_speaker.setdefault(splits.speaker_of(r), set()).add(s)
    assert all(len(v) == 1 for v in per_speaker.values())
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts["val"] >= 0.1 * len(rel) and counts["test"] >= 0.1 * len(rel)
    assert counts["train"] > counts["val"] + counts["test"]


def test_by_ratio_rejects_bad_ratios():
    with pytest.raises(ValueError, match="three numbers"):
        splits.by_ratio(["a/b.mp4"], (1.0, -1.0, 0.0))


def test_by_folder_uses_the_lrs3_names():
    rel = [
        "pretrain/s1/1.mp4",
        "trainval/s2/1.mp4",
        "test/s3/1.mp4",
        "valid/s4/1.mp4",
        "other/s5/1.mp4",
        "top.mp4",
    ]
    assert splits.by_folder(rel) == {
        "pretrain/s1/1.mp4": "train",
        "trainval/s2/1.mp4": "train",
        "test/s3/1.mp4": "test",
        "valid/s4/1.mp4": "val",
    }


def test_split_file_with_and_without_suffix_and_clear_errors(tmp_path):
    f = tmp_path / "splits.txt"
    f.write_text("# a comment\ntrain a/1\nval a/2.mp4  # trailing\n\ntest b/1\n")
    assert splits.by_file(["a/1.mp4", "a/2.mp4", "b/1.mp4", "c/1.mp4"], f) == {
        "a/1.mp4": "train",
        "a/2.mp4": "val",
        "b/1.mp4": "test",
    }
    f.write_text("train a/1\ntraining a/2\n")
    with pytest.raises(ValueError, match=r"splits.txt:2: expected '<train\|val\|test> <path>'"):
        splits.read_split_file(f)


def test_write_splits_filters_long_train_and_val_only(tmp_path):
    csv = _csv(
        tmp_path,
        [("s/a/1.mp4", 100), ("s/a/2.mp4", 500), ("s/b/1.mp4", 450), ("s/c/1.mp4", 900), ("s/d/1.mp4", 5)],
    )
    assign = {"s/a/1.mp4": "train", "s/a/2.mp4": "train", "s/b/1.mp4": "val", "s/c/1.mp4": "test"}
    report = splits.write_splits(csv, assign, max_frames=400)
    files = {s: Path(p).read_text().splitlines() for s, p in report.files.items()}
    assert [r.split(",")[1] for r in files["train"]] == ["s/a/1.mp4"]
    assert files["val"] == [] and [r.split(",")[1] for r in files["test"]] == ["s/c/1.mp4"]
    assert files["train"][0] == "mine,s/a/1.mp4,100,0,text of s/a/1.mp4"  # lines copied as they are
    assert report.too_long == {"train": 1, "val": 1} and report.unassigned == 1
    assert (
        report.summary() == "splits: train 1, val 0, test 1; 2 over the length limit dropped; 1 in no split"
    )
    assert Path(report.files["train"]).name == "mine_train.csv"


def test_prepare_command_refuses_a_length_filter_without_splits(tmp_path, caplog):
    from llama_avsr.cli import main

    assert main(["prepare", str(tmp_path), "-o", str(tmp_path / "out"), "--max-seconds", "16"]) == 2
    assert "--max-seconds filters the train/val splits" in caplog.text
