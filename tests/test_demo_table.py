"""The demo's results lead with AVSR against its audio-only reference per SNR, with the WER ratio."""

from __future__ import annotations

from llama_avsr.commands.demo import VIDEO_BLANKED, comparison_table


def _r(wer: float) -> dict[str, float]:
    return {"wer": wer}


def test_ratio_against_asr_when_trained() -> None:
    s = {
        "asr": {"clean": _r(0.05), "0": _r(0.40)},
        "vsr": {"clean": _r(0.35)},
        "avsr": {"clean": _r(0.04), "0": _r(0.10)},
    }
    lines = comparison_table(s).splitlines()
    assert "ASR WER %" in lines[0] and "AVSR/ASR ratio" in lines[0] and "VSR WER %" in lines[0]
    assert lines[2].split() == ["clean", "5.00", "4.00", "0.80", "35.00"]
    assert lines[3].split() == ["0", "40.00", "10.00", "0.25", "35.00"]


def test_default_demo_names_the_video_blanked_reference() -> None:
    s = {"avsr": {"clean": _r(0.05), "0": _r(0.2)}, VIDEO_BLANKED: {"clean": _r(0.05), "0": _r(0.0)}}
    table = comparison_table(s)
    assert "AVSR, video blanked WER %" in table and "ASR WER" not in table.replace("AVSR", "")
    assert table.splitlines()[3].split()[-1] == "-"  # no ratio against a zero WER
    assert comparison_table({"avsr": {"clean": _r(0.1)}}) == ""


def test_each_demo_task_warms_up_only_its_streams(tmp_path) -> None:
    from llama_avsr.commands.demo import DEMO_CONFIG, task_config
    from llama_avsr.config import load_yaml

    base = load_yaml(DEMO_CONFIG)
    for task, streams in (("asr", {"audio"}), ("vsr", {"video"}), ("avsr", {"audio", "video"})):
        exp = task_config(base, task, tmp_path, 1.0, [])
        assert set(exp.model.streams) == streams
        assert set(exp.train.ctc_warmup_streams) == streams
