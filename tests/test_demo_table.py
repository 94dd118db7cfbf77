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


def test_the_demo_vsr_model_aligns_its_lip_targets_on_the_soundtrack_without_reading_audio(tmp_path) -> None:
    """The VSR model of ``demo --full`` borrows the AVSR recipe's Whisper to align its frame targets
    (train.aligner_encoders) and holds no audio encoder; the ASR model has no lip encoder to align."""
    from llama_avsr.commands.demo import DEMO_CONFIG, task_config
    from llama_avsr.config import load_yaml

    base = load_yaml(DEMO_CONFIG)
    vsr = task_config(base, "vsr", tmp_path, 1.0, [])
    whisper = base["model"]["streams"]["audio"]["encoder"]
    assert vsr.model.modalities == ["video"] and whisper not in vsr.model.encoders
    assert vsr.train.warmup_aligners == {"video": whisper}
    assert vsr.train.aligner_encoders[whisper].source == base["model"]["encoders"][whisper]["source"]
    asr = task_config(base, "asr", tmp_path, 1.0, [])
    assert not asr.train.warmup_aligners and not asr.train.aligner_encoders
    avsr = task_config(base, "avsr", tmp_path, 1.0, [])
    assert avsr.train.warmup_aligners == {"video": "audio"} and not avsr.train.aligner_encoders


def test_noisy_training_mixes_babble_into_part_of_the_audio(tmp_path) -> None:
    """The demo recipe mixes babble into about two thirds of the training utterances at the listed SNRs
    (down to -5 dB), with no time masks, and leaves the rest clean; each utterance's noisy audio is one of
    3 fixed variants (so Whisper's features are cached); the video is not augmented; the recipe blanks
    audio or video of some utterances; evaluation audio stays clean unless an SNR is asked for."""
    import dataclasses

    import numpy as np
    import torch

    from llama_avsr import media
    from llama_avsr.commands.demo import DEMO_CONFIG, task_config
    from llama_avsr.config import load_yaml
    from llama_avsr.data.noise import AddNoise, measure_snr
    from llama_avsr.data.transforms import build_pipeline

    rng = np.random.default_rng(0)
    noise = tmp_path / "babble.wav"
    media.write_wav(noise, (0.1 * rng.standard_normal(48000)).astype(np.float32))
    exp = task_config(load_yaml(DEMO_CONFIG), "avsr", tmp_path, 1.0, [])
    assert exp.data.train_augment == ["audio"] and exp.data.augment_variants == {"audio": 3}
    assert exp.train.feature_cache and exp.train.warmup_aligners == {"video": "audio"}
    data = dataclasses.replace(exp.data, noise_file=str(noise))
    assert [type(step) for step in build_pipeline("train", "audio", data).steps] == [AddNoise]
    assert "random=False" in repr(build_pipeline("train", "video", data))
    assert data.modality_dropout.get("audio", 0) > 0 and data.modality_dropout.get("video", 0) > 0
    add = build_pipeline("train", "audio", data).steps[-1]
    speech = torch.from_numpy(
        (0.3 * np.sin(np.arange(32000) * 0.05) * rng.uniform(0.5, 1, 32000)).astype(np.float32)
    )
    snrs = []
    for k in range(120):
        out = add(speech, torch.Generator().manual_seed(k))
        snrs.append(None if torch.equal(out, speech) else round(measure_snr(speech, out), 1))
    noisy = [s for s in snrs if s is not None]
    assert 60 <= len(noisy) <= 100, len(noisy)  # 80 expected
    assert set(noisy) == {float(s) for s in data.train_snrs if s is not None} and min(noisy) <= -5
    assert torch.equal(build_pipeline("val", "audio", data)(speech.clone(), torch.Generator()), speech)


def test_the_demo_avsr_model_starts_from_the_streams_trained_before_it(tmp_path) -> None:
    """The demo trains VSR then AVSR (``--full``: ASR, VSR, AVSR); the AVSR model starts from the parts of
    those trained before it (train.init_from), configured exactly as in their source models (what
    init_from checks), and does not warm them up."""
    from llama_avsr.commands.demo import (
        AVSR_PARTS_FROM,
        DEMO_CONFIG,
        MINUTES_DEFAULT,
        MINUTES_FULL,
        TASKS_DEFAULT,
        TASKS_FULL,
        stage_init,
        task_config,
    )
    from llama_avsr.config import TASKS, load_yaml

    assert set(TASKS_FULL) == set(TASKS) and TASKS_FULL[-1] == TASKS_DEFAULT[-1] == "avsr"
    assert set(MINUTES_FULL) == set(TASKS_FULL) and set(MINUTES_DEFAULT) == set(TASKS_DEFAULT)
    base = load_yaml(DEMO_CONFIG)
    vsr_dir, asr_dir = tmp_path / "vsr" / "model", tmp_path / "asr" / "model"
    assert stage_init("avsr", {}) is None and stage_init("vsr", {"asr": asr_dir}) is None
    assert stage_init("avsr", {"vsr": vsr_dir}) == {"video": str(vsr_dir), "llm": str(vsr_dir)}
    init = stage_init("avsr", {"asr": asr_dir, "vsr": vsr_dir})
    assert init == {"audio": str(asr_dir), "video": str(vsr_dir), "llm": str(vsr_dir)}
    avsr = task_config(base, "avsr", tmp_path, 1.0, [], noisy=True, init_from=init)
    assert avsr.train.init_from == init
    assert not avsr.train.ctc_warmup and not avsr.train.warmup_aligners and not avsr.train.aligner_encoders
    # the default demo: the audio stream is warmed up, the video stream (from the VSR model) is not
    staged = task_config(base, "avsr", tmp_path, 1.0, [], init_from=stage_init("avsr", {"vsr": vsr_dir}))
    assert set(staged.train.ctc_warmup_streams) == {"audio"} and staged.train.warmup_aligners is None
    for part, task in AVSR_PARTS_FROM.items():
        source = task_config(base, task, tmp_path, 1.0, [], noisy=True).model
        if part == "llm":
            assert avsr.model.llm == source.llm
            continue
        ours, theirs = avsr.model.streams[part], source.streams[part]
        assert ours == theirs
        assert avsr.model.encoders[ours.encoder] == source.encoders[theirs.encoder]


def test_demo_overrides_apply_to_the_whole_recipe_before_each_stage_is_cut_from_it(tmp_path) -> None:
    """An override of the audio stream holds for the models that read audio and is dropped with the
    stream for the VSR model; a user's train.init_from=null trains the AVSR model from scratch, with the
    recipe's warm-ups; the demo's output paths and minutes yield to the user's overrides."""
    from llama_avsr.commands.demo import DEMO_CONFIG, stage_init, task_config
    from llama_avsr.config import load_yaml

    base = load_yaml(DEMO_CONFIG)
    ratio = ["model.streams.audio.compression.ratio=6"]
    assert "audio" not in task_config(base, "vsr", tmp_path, 1.0, ratio).model.streams
    init = stage_init("avsr", {"vsr": tmp_path / "vsr" / "model"})
    avsr = task_config(base, "avsr", tmp_path, 1.0, ratio, init_from=init)
    assert avsr.model.streams["audio"].compression.ratio == 6 and avsr.train.init_from == init
    scratch = task_config(base, "avsr", tmp_path, 1.0, ["train.init_from=null"], init_from=init)
    assert scratch.train.init_from is None
    assert scratch.train.ctc_warmup_streams == base["train"]["ctc_warmup_streams"]
    assert scratch.train.warmup_aligners == base["train"]["warmup_aligners"]
    mine = task_config(base, "asr", tmp_path, 1.0, ["train.max_minutes=2.5", "train.init_from={video: x}"])
    assert mine.train.max_minutes == 2.5 and mine.train.init_from is None


def test_the_demo_stages_share_one_feature_cache_folder(tmp_path) -> None:
    """Every stage caches frozen-encoder features in ``<out>/features``: the VSR stage's alignment
    encoder is the AVSR model's audio encoder (the same config, hence the same fingerprint), so the
    clean features the VSR stage aligns with are those the AVSR stage's warm-up reads. A user's
    ``train.feature_cache`` override wins."""
    from llama_avsr.commands.demo import DEMO_CONFIG, FEATURES, task_config
    from llama_avsr.config import load_yaml

    base = load_yaml(DEMO_CONFIG)
    stages = {t: task_config(base, t, tmp_path, 1.0, []) for t in ("asr", "vsr", "avsr")}
    assert {e.train.feature_cache for e in stages.values()} == {str(tmp_path / FEATURES)}
    whisper = base["model"]["streams"]["audio"]["encoder"]
    assert stages["vsr"].train.aligner_encoders[whisper] == stages["avsr"].model.encoders[whisper]
    mine = task_config(base, "avsr", tmp_path, 1.0, ["train.feature_cache=memory"])
    assert mine.train.feature_cache == "memory"
