"""The frozen-encoder feature cache: same features as the encoder, reused (the encoder is not called
again), invalidated when the encoder's weights or config or the input file change; wired into training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llama_avsr import media
from llama_avsr.config import EncoderConfig, ModelConfig, from_dict
from llama_avsr.data.collate import Collator
from llama_avsr.data.config import DataConfig
from llama_avsr.data.dataset import AVDataset
from llama_avsr.data.transforms import build_pipeline, build_transforms
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.encoders import build_encoder
from llama_avsr.models.feature_cache import FeatureCache, cache_for_training

LENGTHS = [16000, 24000, 9000]
WHISPER = {"kind": "whisper", "arch": "tiny-whisper", "options": {"pad_to_30s": False}}


class CallCounter:
    """Counts encoder forward calls and the batch size of each."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        module.register_forward_hook(lambda m, args, out: self.batches.append(out[0].shape[0]))

    @property
    def calls(self) -> int:
        return len(self.batches)


def make_encoder(seed: int = 0, **options):
    torch.manual_seed(seed)
    cfg = EncoderConfig(**{**WHISPER, "options": {**WHISPER["options"], **options}})
    return build_encoder(cfg), cfg


def audio_batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = 0.1 * torch.randn(n, generator=g)
    return {"audio": wav}, {"audio": torch.tensor(lengths)}


def valid(feats, lens):
    return [feats[i, : int(n)] for i, n in enumerate(lens)]


@pytest.mark.parametrize("pad_to_30s", [False, True], ids=["true-length", "padded-30s"])
def test_cache_returns_the_encoder_features_and_is_reused(pad_to_30s):
    enc, cfg = make_encoder(pad_to_30s=pad_to_30s)
    counter = CallCounter(enc)
    inputs, lengths = audio_batch()
    with torch.no_grad():
        ref = enc(inputs, lengths)
        cache = FeatureCache()
        first = cache.encode("whisper", enc, cfg, inputs, lengths)
        second = cache.encode("whisper", enc, cfg, inputs, lengths)
    assert counter.calls == 2  # the reference call and the cache's first; none for the second
    assert cache.hits == 3 and cache.misses == 3 and len(cache) == 3
    for got in (first, second):
        torch.testing.assert_close(got[1], ref[1])
        for a, b in zip(valid(*got), valid(*ref), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_partial_hits_encode_only_the_new_utterances():
    enc, cfg = make_encoder()
    counter = CallCounter(enc)
    inputs, lengths = audio_batch()
    cache = FeatureCache()
    with torch.no_grad():
        ref = enc(inputs, lengths)
        two = {"audio": inputs["audio"][:2]}, {"audio": lengths["audio"][:2]}
        cache.encode("whisper", enc, cfg, *two)
        feats, lens = cache.encode("whisper", enc, cfg, inputs, lengths)
    assert counter.batches == [3, 2, 1]
    for a, b in zip(valid(feats, lens), valid(*ref), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert float(feats[2, int(lens[2]) :].abs().sum()) == 0.0  # padding is zero


def test_invalidated_when_the_encoder_weights_change():
    enc, cfg = make_encoder()
    counter = CallCounter(enc)
    inputs, lengths = audio_batch()
    cache = FeatureCache()
    with torch.no_grad():
        before = cache.encode("whisper", enc, cfg, inputs, lengths)[0]
        next(enc.parameters()).add_(0.01)  # in place: the fingerprint is recomputed
        after = cache.encode("whisper", enc, cfg, inputs, lengths)[0]
        other, _ = make_encoder(seed=1)  # same config, other weights
        c2 = CallCounter(other)
        cache.encode("whisper", other, cfg, inputs, lengths)
    assert counter.calls == 2 and c2.calls == 1 and cache.hits == 0
    assert not torch.allclose(before, after)


def test_invalidated_when_the_encoder_config_changes():
    enc, cfg = make_encoder()
    counter = CallCounter(enc)
    inputs, lengths = audio_batch()
    cache = FeatureCache()
    with torch.no_grad():
        cache.encode("whisper", enc, cfg, inputs, lengths)
        cache.encode("whisper", enc, dataclasses.replace(cfg, options={"pad_to_30s": True}), inputs, lengths)
        cache.encode("whisper", enc, dataclasses.replace(cfg, dtype="bfloat16"), inputs, lengths)
        cache.encode("whisper", enc, cfg, inputs, lengths)
    assert counter.calls == 3 and cache.hits == 3


def test_not_applied_to_trainable_or_train_mode_encoders():
    enc, cfg = make_encoder()
    cache = FeatureCache()
    assert cache.applies("whisper", enc)
    assert not FeatureCache(encoders=["other"]).applies("whisper", enc)
    enc.train()  # a frozen encoder keeps eval mode…
    assert cache.applies("whisper", enc)
    enc.keep_train_mode = True  # …unless the reference's train mode is asked for
    enc.train()
    assert not cache.applies("whisper", enc)
    enc.eval()
    next(enc.parameters()).requires_grad_(True)
    assert not cache.applies("whisper", enc)


def _write_utterance(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path = folder / "utt.wav"
    media.write_wav(path, (0.1 * rng.standard_normal(20000)).astype(np.float32))
    return path


def test_disk_cache_is_shared_between_runs_and_invalidated_when_the_input_file_changes(tmp_path):
    from llama_avsr.data.corpus import utterance_from_file

    wav = _write_utterance(tmp_path, seed=0)
    transforms = {"audio": build_pipeline("test", "audio", DataConfig())}
    collate = Collator(SimpleNamespace(eos_token_id=0), modalities=["audio"], with_targets=False)

    def batch():
        ds = AVDataset([utterance_from_file(wav)], ["audio"], transforms, on_error="raise")
        b = collate([ds[0]])
        return b.inputs, b.lengths

    enc, cfg = make_encoder()
    counter = CallCounter(enc)
    root = tmp_path / "cache"
    with torch.no_grad():
        first = FeatureCache(root).encode("whisper", enc, cfg, *batch())
        files = list(root.rglob("*.safetensors"))
        again = FeatureCache(root).encode("whisper", enc, cfg, *batch())  # a new run: from disk
        assert counter.calls == 1 and len(files) == 1
        torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)
        _write_utterance(tmp_path, seed=1)  # the file changes (same name and length)
        changed = FeatureCache(root).encode("whisper", enc, cfg, *batch())
    assert counter.calls == 2 and len(list(root.rglob("*.safetensors"))) == 2
    assert not torch.allclose(changed[0], first[0])


def test_damaged_entry_is_recomputed(tmp_path):
    enc, cfg = make_encoder()
    inputs, lengths = audio_batch([16000])
    with torch.no_grad():
        FeatureCache(tmp_path).encode("whisper", enc, cfg, inputs, lengths)
        (entry,) = tmp_path.rglob("*.safetensors")
        entry.write_bytes(b"garbage")
        counter = CallCounter(enc)
        FeatureCache(tmp_path).encode("whisper", enc, cfg, inputs, lengths)
    assert counter.calls == 1


# ------------------------------------------------------------------------------------------------
# in the model and in training


def tiny_config(tokenizer_dir: Path, video: bool = False) -> dict:
    streams = {
        "audio": {
            "encoder": "whisper",
            "inputs": ["audio"],
            "compression": {"kind": "stack", "ratio": 4},
            "projector": {"hidden": 32},
            "begin_token": "<audio>",
            "end_token": "</audio>",
        }
    }
    encoders = {"whisper": WHISPER}
    if video:
        streams["video"] = {"encoder": "avhubert", "inputs": ["video"], "projector": {"hidden": 32}}
        encoders["avhubert"] = {"kind": "avhubert", "arch": "tiny-avhubert", "frozen": False}
    llm = {"source": None, "arch": "tiny-llama", "tokenizer": str(tokenizer_dir)}
    return {"encoders": encoders, "streams": streams, "llm": llm}


def tiny_model(tokenizer_dir: Path, video: bool = False) -> AVSRModel:
    torch.manual_seed(0)
    return AVSRModel(from_dict(ModelConfig, tiny_config(tokenizer_dir, video)))


def test_model_forward_uses_the_cache_with_the_same_loss(smollm2_dir):
    model = tiny_model(smollm2_dir)
    counter = CallCounter(model.encoders["whisper"])
    g = torch.Generator().manual_seed(0)
    texts = ["hello world", "the cat sat on the mat", "hi"]
    samples = [
        {"id": str(i), "text": t, "audio": 0.1 * torch.randn(n, generator=g)}
        for i, (t, n) in enumerate(zip(texts, LENGTHS, strict=True))
    ]
    batch = Collator(model.tokenizer, ["audio"])(samples)
    plain = model(batch).loss
    model.feature_cache = FeatureCache()
    cached = [model(batch) for _ in range(2)]
    assert counter.calls == 2  # plain + the cache's first
    for out in cached:
        torch.testing.assert_close(out.loss, plain)
    cached[1].loss.backward()
    assert all(p.grad is not None for p in model.projectors.parameters())


def test_training_caches_only_frozen_encoders_of_unaugmented_modalities(smollm2_dir, caplog):
    model = tiny_model(smollm2_dir, video=True)
    assert cache_for_training(model, "memory", ["audio", "video"]) is None
    assert "data.train_augment" in caplog.text
    cache = cache_for_training(model, "memory", ["video"])
    assert cache is not None and cache.encoders == {"whisper"} and cache.root is None
    assert "'avhubert' trains" in caplog.text
    assert cache_for_training(model, "/some/dir", []).root == Path("/some/dir")


def test_train_augment_switch_gives_the_clean_pipeline_in_training():
    data = DataConfig(train_augment=["video"], train_snrs=[0.0])
    t = build_transforms("train", ["audio", "video"], data)
    assert repr(t["audio"]) == repr(build_pipeline("test", "audio", DataConfig()))
    assert "random=True" in repr(t["video"])
    with pytest.raises(ValueError, match="train_augment"):
        DataConfig(train_augment=["speech"])


@pytest.mark.parametrize(
    "augment, variants, epochs, encoded",
    [([], {}, 3, 4), (["audio"], {"audio": 2}, 4, 8)],
    ids=["clean", "two-noisy-variants"],
)
def test_training_run_reuses_features_across_epochs(
    tmp_path, smollm2_dir, monkeypatch, augment, variants, epochs, encoded
):
    """`train.feature_cache=memory` with audio augmentation off: the Whisper encoder runs in the first
    epoch only; with noisy audio in two fixed variants (`data.augment_variants`), in the first two."""
    from llama_avsr.models.encoders.whisper import WhisperEncoder
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.run import train

    root = tmp_path / "corpus"
    rows = []
    rng = np.random.default_rng(0)
    for i in range(4):
        rel = f"train/u{i}.mp4"
        (root / "d" / "train").mkdir(parents=True, exist_ok=True)
        media.write_wav(root / "d" / rel.replace(".mp4", ".wav"), 0.1 * rng.standard_normal(12800))
        rows.append(f"d,{rel},20,0,word number {i}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    noise = tmp_path / "noise.wav"
    media.write_wav(noise, 0.1 * rng.standard_normal(16000))

    calls = []
    forward = WhisperEncoder.forward
    monkeypatch.setattr(
        WhisperEncoder, "forward", lambda self, *a: calls.append(a[1]["audio"].shape[0]) or forward(self, *a)
    )
    exp = ExperimentConfig.from_dict(
        {
            "model": tiny_config(smollm2_dir),
            "data": {
                "root": str(root),
                "train_csv": str(root / "train.csv"),
                "max_frames": 40,
                "num_workers": 0,
                "train_augment": augment,
                "augment_variants": variants,
                "noise_file": str(noise),
                "train_snrs": [0],
            },
            "train": {
                "out_dir": str(tmp_path / "run"),
                "epochs": epochs,
                "warmup_steps": 1,
                "precision": "32-true",
                "accelerator": "cpu",
                "devices": 1,
                "loggers": ["csv"],
                "eval_at_end": False,
                "feature_cache": "memory",
            },
        }
    )
    train(exp)
    assert sum(calls) == encoded, calls  # each utterance (variant) encoded once


def test_fingerprint_of_an_encoder_with_scalar_buffers():
    """A frozen encoder with BatchNorm (a 0-d ``num_batches_tracked`` buffer, as AV-HuBERT's ResNet)
    can be fingerprinted, and the scalar counts: a different value, a different fingerprint."""
    from llama_avsr.models.feature_cache import weights_fingerprint

    net = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1), torch.nn.BatchNorm1d(2)).eval()
    before = weights_fingerprint(net)
    net[1].num_batches_tracked += 1
    assert weights_fingerprint(net) != before
