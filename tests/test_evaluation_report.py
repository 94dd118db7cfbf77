"""WER per speaker and for seen vs held-out voices; skipped items counted and optionally scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_avsr.data.config import DataConfig
from llama_avsr.evaluation.report import (
    breakdown,
    results_table,
    skipped_records,
    speaker_of,
    speaker_table,
    training_speakers,
)

RECORDS = [
    {"id": "synth/test/spk00/00001", "ref": "a b c d", "hyp": "a b c d"},  # seen, 0 errors
    {"id": "synth/test/spk01/00001", "ref": "a b c d", "hyp": "a x c d"},  # seen, 1 error
    {"id": "synth/test/spk10/00001", "ref": "a b c d", "hyp": "a x y"},  # held out, 3 errors
    {"id": "synth/test/spk10/00002", "ref": "e f", "hyp": "e f"},  # held out, 0 errors
]


def test_speaker_is_the_folder_holding_the_utterance():
    assert speaker_of("lrs3/test/0Fi83BHQsMA/00002") == "0Fi83BHQsMA"
    assert speaker_of("test/spk10/00001.mp4") == "spk10"
    assert speaker_of("trainval\\abc\\00001") == "abc"


def test_training_speakers_from_the_training_csv(tmp_path: Path):
    csv = tmp_path / "train.csv"
    csv.write_text("synth,train/spk00/00001.mp4,50,1 2,a b\nsynth,train/spk01/00001.mp4,50,1,c\n\n")
    assert training_speakers(DataConfig(train_csv=str(csv))) == {"spk00", "spk01"}
    assert training_speakers(DataConfig()) is None
    assert training_speakers(DataConfig(train_csv=str(tmp_path / "missing.csv"))) is None


def test_seen_and_held_out_groups_and_speakers():
    r = breakdown(RECORDS, frozenset({"spk00", "spk01", "spk02"}))
    assert (r["wer_ref"], r["wer_sub"] + r["wer_ins"] + r["wer_del"]) == (14, 4)
    assert r["wer"] == pytest.approx(4 / 14) and r["utterances"] == 4 and r["skipped"] == 0
    seen, held = r["groups"]["seen"], r["groups"]["held_out"]
    assert seen["wer"] == pytest.approx(1 / 8) and seen["speakers"] == 2 and seen["utterances"] == 2
    assert held["wer"] == pytest.approx(3 / 6) and held["speakers"] == 1 and held["wer_ref"] == 6
    assert r["speakers"]["spk10"] == {"wer": 0.5, "words": 6, "utterances": 2, "skipped": 0, "seen": False}
    assert r["speakers"]["spk00"]["seen"] is True
    # without training labels there is no seen/held-out split, the rest stays
    plain = breakdown(RECORDS, None)
    assert "groups" not in plain and plain["wer"] == r["wer"] and "seen" not in plain["speakers"]["spk00"]


def test_skipped_items_are_counted_and_optionally_scored_as_full_errors():
    refs = {"synth/test/spk10/00003": "g h i"}
    records = RECORDS + skipped_records(["synth/test/spk10/00003"], refs)
    seen = frozenset({"spk00", "spk01"})
    left_out = breakdown(records, seen)
    assert left_out["skipped"] == 1 and left_out["wer"] == pytest.approx(4 / 14)
    assert left_out["groups"]["held_out"]["skipped"] == 1 and left_out["speakers"]["spk10"]["skipped"] == 1
    scored = breakdown(records, seen, skipped_as_errors=True)
    assert scored["wer"] == pytest.approx(7 / 17) and scored["wer_del"] == left_out["wer_del"] + 3
    assert scored["groups"]["held_out"]["wer"] == pytest.approx(6 / 9)
    assert scored["utterances"] == 4 and scored["skipped"] == 1 and scored["skipped_scored"]


def test_tables_show_overall_seen_held_out_and_skipped():
    refs = {"synth/test/spk10/00003": "g h i"}
    r = breakdown(RECORDS + skipped_records(refs, refs), frozenset({"spk00", "spk01"}))
    r["utterances_per_second"] = 2.0
    table = results_table({"avsr": {"clean": r}})
    header, _, row, note = table.splitlines()
    assert header.split()[:7] == ["model", "SNR", "dB", "WER", "%", "seen", "%"] and "held-out" in header
    cells = row.split()
    assert cells[:5] == ["avsr", "clean", "28.57", "12.50", "50.00"] and cells[-2] == "1"
    assert "not in the WER" in note
    spk = speaker_table({"clean": r, "0": r})
    line = next(x for x in spk.splitlines() if x.startswith("spk10"))
    assert line.split()[:4] == ["spk10", "held-out", "6", "50.00"] and "(1 sk)" in line
