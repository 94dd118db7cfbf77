"""Model core on tiny random configs: encoders, compression, splicing, loss, LoRA, beam search, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from llama_avsr.config import (
    CompressionConfig,
    EncoderConfig,
    ModelConfig,
    find_arch,
    from_dict,
)
from llama_avsr.data.batch import PAD_LABEL
from llama_avsr.data.collate import Collator
from llama_avsr.decoding.options import DecodingOptions
from llama_avsr.decoding.search import generate
from llama_avsr.models.avsr import AVSRModel, TrainableStateError
from llama_avsr.models.compression import build_compressor
from llama_avsr.models.encoders import build_encoder
from llama_avsr.models.encoders.base import layer_norm_waveform
from llama_avsr.models.encoders.whisper import LogMel
from llama_avsr.models.llm import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["hello world", "the cat sat on the mat", "hi"]
SAMPLES_LEN = [16000, 24000, 9000]


def tiny_cfg(streams: dict, encoders: dict, lora: bool = True, **extra) -> ModelConfig:
    return from_dict(
        ModelConfig,
        {
            "encoders": encoders,
            "streams": streams,
            "llm": {
                "source": None,
                "arch": "tiny-llama",
                "tokenizer": "smollm2-135m",
                "lora": {"reduction": 8, "alpha": 8} if lora else None,
            },
            **extra,
        },
    )


WHISPER = {"kind": "whisper", "arch": "tiny-whisper", "options": {"pad_to_30s": False}}
WAVLM = {"kind": "wavlm", "arch": "tiny-wavlm"}


def audio_stream(encoder="whisper", kind="stack", ratio=3, delim=True):
    s = {
        "encoder": encoder,
        "inputs": ["audio"],
        "compression": {"kind": kind, "ratio": ratio},
        "projector": {"hidden": 32},
    }
    if delim:
        s.update(begin_token="<audio>", end_token="</audio>")
    return s


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def samples(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"id": str(i), "text": t, "audio": 0.1 * torch.randn(n, generator=g)}
        for i, (t, n) in enumerate(zip(TEXTS, SAMPLES_LEN, strict=True))
    ]


def build(cfg, tokenizer, seed=0):
    torch.manual_seed(seed)
    model = AVSRModel(cfg, tokenizer=tokenizer)
    # LoRA B starts at zero; make adapters non-trivial so tests see them
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


# ------------------------------------------------------------------------------------------------
# compression


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_stack_groups_consecutive_frames_and_tracks_lengths(remainder):
    comp = build_compressor(CompressionConfig(kind="stack", ratio=3, remainder=remainder))
    x = torch.arange(2 * 8 * 2, dtype=torch.float32).reshape(2, 8, 2)
    lengths = torch.tensor([8, 4])
    y, n = comp(x, lengths)
    expect_len = [2, 1] if remainder == "drop" else [3, 2]
    assert n.tolist() == expect_len
    assert y.shape == (2, max(expect_len), 6)
    assert torch.equal(y[0, 0], x[0, 0:3].flatten())
    assert torch.equal(y[0, 1], x[0, 3:6].flatten())
    if remainder == "pad":
        # sample 1 has 4 valid frames: the 2nd group holds frame 3 then zeros (padding never leaks)
        assert torch.equal(y[1, 1], torch.cat([x[1, 3], torch.zeros(4)]))
        assert torch.equal(y[0, 2], torch.cat([x[0, 6:8].flatten(), torch.zeros(2)]))


def test_avg_pool_averages_valid_frames_only():
    comp = build_compressor(CompressionConfig(kind="avg-pool", ratio=2, remainder="pad"))
    x = torch.tensor([[[1.0], [3.0], [5.0], [100.0]]])
    y, n = comp(x, torch.tensor([3]))
    assert n.tolist() == [2]
    assert y[0, :, 0].tolist() == [2.0, 5.0]  # frame 3 (100) is padding and must not count
    assert comp.output_dim(7) == 7


def test_compression_keeps_at_least_one_frame():
    comp = build_compressor(CompressionConfig(kind="stack", ratio=4))
    y, n = comp(torch.ones(1, 2, 3), torch.tensor([2]))
    assert n.tolist() == [1] and y.shape == (1, 1, 12)


def test_unknown_compressor_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown compressor 'max'.*avg-pool, stack"):
        build_compressor(CompressionConfig(kind="max"))


# ------------------------------------------------------------------------------------------------
# encoders


def test_logmel_matches_whisper_feature_extractor():
    wav = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=80)
    ref = fe(wav, sampling_rate=16000, return_tensors="np").input_features[0]  # (80, 3000)
    padded = torch.zeros(1, 30 * 16000)
    padded[0, : len(wav)] = torch.from_numpy(wav)
    ours = LogMel(80)(padded, torch.tensor([len(wav)]))[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_whisper_padded_mode_matches_hf_encoder_and_cuts_like_the_reference():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(**{**WHISPER, "options": {"pad_to_30s": True}}))
    hf = HFWhisperEncoder(WhisperConfig.from_json_file(str(find_arch("tiny-whisper")))).eval()
    hf.load_state_dict(enc.encoder.state_dict())
    wav = 0.1 * torch.randn(2, 16000)
    n = torch.tensor([16000, 8000])
    feats, lens = enc({"audio": wav}, {"audio": n})
    assert feats.shape == (2, 50, 64) and lens.tolist() == [50, 25]
    with torch.no_grad():  # the reference layer-normalises each waveform before Whisper's features
        padded = torch.nn.functional.pad(layer_norm_waveform(wav, n), (0, 29 * 16000))
        ref = hf(LogMel(80)(padded, n)).last_hidden_state[:, :50]
    torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec", [WHISPER, WAVLM], ids=["whisper-true-length", "wavlm"])
def test_audio_encoder_features_do_not_depend_on_batch_padding(spec):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(**spec))
    wav = 0.1 * torch.randn(2, 24000)
    n = torch.tensor([24000, 9000])
    with torch.no_grad():
        feats, lens = enc({"audio": wav}, {"audio": n})
        alone, alone_len = enc({"audio": wav[1:, :9000]}, {"audio": n[1:]})
    assert feats.shape[-1] == enc.output_dim and lens[1] == alone_len[0]
    torch.testing.assert_close(feats[1, : lens[1]], alone[0], atol=1e-4, rtol=1e-4)


def test_frozen_encoder_stays_in_eval_mode_unless_reference_train_mode(tokenizer):
    model = build(tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}), tokenizer)
    model.train()
    assert not model.encoders["whisper"].training and model.projectors.training
    cfg = tiny_cfg({"audio": audio_stream()}, {"whisper": {**WHISPER, "train_mode": True}})
    model = build(cfg, tokenizer)
    model.train()
    assert model.encoders["whisper"].training


def test_unknown_encoder_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        build_encoder(EncoderConfig(kind="whisper", arch="tiny-whisper", options={"pad_to_40s": True}))


# ------------------------------------------------------------------------------------------------
# the fused model


CONFIGS = {
    "whisper-stack-lora": lambda: tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}),
    "wavlm-avgpool-nolora": lambda: tiny_cfg(
        {"audio": audio_stream("wavlm", "avg-pool", 2)}, {"wavlm": WAVLM}, lora=False
    ),
    "two-streams-sink": lambda: tiny_cfg(
        {"audio": audio_stream(), "extra": audio_stream("wavlm", "stack", 2, delim=False)},
        {"whisper": WHISPER, "wavlm": WAVLM},
        sink_loss_factor=10.0,
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_backward_trains_only_the_chosen_parameters(name, tokenizer):
    cfg = CONFIGS[name]()
    model = build(cfg, tokenizer)
    batch = Collator(tokenizer, ["audio"])(samples())
    out = model(batch)
    assert torch.isfinite(out.loss) and out.n_tokens == sum(
        len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in TEXTS
    )
    if cfg.sink_loss_factor:
        assert out.sink_loss > 0
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert all(n.startswith("projectors.") or "lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable) == (cfg.llm.lora is not None)
    assert not any(n.startswith("encoders.") for n in trainable)


def test_sequence_layout_and_label_masking(tokenizer):
    model = build(tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}), tokenizer)
    batch = Collator(tokenizer, ["audio"])(samples())
    seq = model.prepare(batch, with_targets=True)
    ids = model.ids
    prompt = tokenizer("Transcribe speech to text.", add_special_tokens=False)["input_ids"]
    feats = model.encode(batch)[0]
    for i, text in enumerate(TEXTS):
        row = seq.input_ids[i][seq.attention_mask[i].bool()].tolist()
        kinds = seq.stream_index[i][seq.attention_mask[i].bool()].tolist()
        n = int(feats.lengths[i])
        target = tokenizer(text, add_special_tokens=False)["input_ids"] + [ids.eos]
        assert row[0] == ids.bos
        assert row[1] == ids.added["<audio>"] and row[2 + n] == ids.added["</audio>"]
        assert kinds[2 : 2 + n] == [0] * n and kinds.count(0) == n  # placeholders = features
        assert row[3 + n : 3 + n + len(prompt)] == prompt
        assert row[3 + n + len(prompt) :] == target
        labels = seq.labels[i][seq.attention_mask[i].bool()].tolist()
        assert labels == [PAD_LABEL] * (3 + n + len(prompt)) + target  # loss on transcript+EOS only
        # left padding: every row ends at the last column, padding is masked out
        assert seq.attention_mask[i, -1] == 1
    # the spliced embeddings are exactly the projected features
    i = 1
    where = seq.stream_index[i] == 0
    torch.testing.assert_close(seq.embeds[i][where], feats.features[i, : feats.lengths[i]])


def test_splice_rejects_count_mismatch(tokenizer):
    from llama_avsr.models.splice import StreamFeatures, build_sequences

    model = build(tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}), tokenizer)
    emb = model.llm.get_input_embeddings()
    good = StreamFeatures(torch.zeros(1, 4, 64), torch.tensor([4]))
    build_sequences(emb, [good], [5], 1, 0)
    with pytest.raises(ValueError, match="placeholders"):
        build_sequences(emb, [StreamFeatures(torch.zeros(1, 4, 64), torch.tensor([5]))], [5], 1, 0)


def test_loss_is_invariant_to_batch_composition(tokenizer):
    model = build(tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}), tokenizer).eval()
    col = Collator(tokenizer, ["audio"])
    s = samples()
    with torch.no_grad():
        together = model(col(s))
        sums = [model(col([x])).lm_loss_sum for x in s]
    torch.testing.assert_close(together.lm_loss_sum, torch.stack(sums).sum(), atol=1e-3, rtol=1e-4)


def test_lora_follows_reference_semantics(tokenizer):
    from peft import PeftModel

    model = build(tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER}), tokenizer)
    assert isinstance(model.llm, PeftModel)
    pc = model.llm.peft_config["default"]
    hidden = 64
    r = hidden // 8
    assert pc.r == r and math.isclose(pc.lora_alpha / pc.r, 8 / 8)  # scaling = alpha / reduction
    attn = model.llm.get_base_model().model.layers[0].self_attn
    assert attn.q_proj.lora_B["default"].weight.shape == (64, r)
    assert attn.v_proj.lora_B["default"].weight.shape == (attn.v_proj.base_layer.out_features, r)  # GQA
    assert attn.v_proj.base_layer.out_features == 32


def test_beam_search_is_deterministic_and_batched_equals_one_by_one(tokenizer):
    cfg = tiny_cfg(
        {"audio": audio_stream(), "extra": audio_stream("wavlm", "avg-pool", 2, delim=False)},
        {"whisper": WHISPER, "wavlm": WAVLM},
    )
    model = build(cfg, tokenizer).eval()
    col = Collator(tokenizer, ["audio"], with_targets=False)
    s = samples()
    opts = DecodingOptions(num_beams=4, max_new_tokens=6)
    batched = generate(model, col(s), opts)
    assert batched == generate(model, col(s), opts)
    assert batched == [generate(model, col([x]), opts)[0] for x in s]
    assert all(isinstance(t, str) for t in batched)


def test_trainable_weights_round_trip_and_mismatch(tmp_path, tokenizer):
    cfg = tiny_cfg({"audio": audio_stream()}, {"whisper": WHISPER})
    a = build(cfg, tokenizer, seed=0).eval()
    b = build(cfg, tokenizer, seed=0).eval()  # same frozen base (random tiny LLM), then new adapters
    with torch.no_grad():
        for p in b.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = Collator(tokenizer, ["audio"])(samples())
    path = tmp_path / "trainable.safetensors"
    a.save_trainable(path)
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    with torch.no_grad():
        assert not torch.allclose(a(batch).loss, b(batch).loss)
        b.load_trainable(path)
        torch.testing.assert_close(a(batch).loss, b(batch).loss)
    other = build(tiny_cfg({"audio": audio_stream(ratio=2)}, {"whisper": WHISPER}), tokenizer)
    with pytest.raises(TrainableStateError, match="shape mismatch"):
        other.load_trainable(path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TrainableStateError, match="not a readable"):
        a.load_trainable(tmp_path / "bad.safetensors")


def test_prompt_follows_modalities():
    enc = {"whisper": WHISPER}
    assert tiny_cfg({"audio": audio_stream()}, enc).prompt == "Transcribe speech to text."
    video = {"encoder": "whisper", "inputs": ["video"]}
    assert tiny_cfg({"video": video}, enc).prompt == "Transcribe video to text."
    both = {"encoder": "whisper", "inputs": ["audio", "video"]}
    assert tiny_cfg({"av": both}, enc).prompt == "Transcribe speech and video to text."


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(ModelConfig, {"encoders": {}, "streams": {}, "bogus": 1})
    with pytest.raises(ValueError, match="unknown encoder"):
        tiny_cfg({"audio": {"encoder": "nope", "inputs": ["audio"]}}, {"whisper": WHISPER})


def test_paper_asr_recipe_has_42m_trainable_parameters(capsys):
    from llama_avsr.cli import main

    assert main(["params", "--config", str(REPO / "configs/paper/asr.yaml")]) == 0
    out = capsys.readouterr().out
    trainable = int(out.strip().splitlines()[-1].split(":")[1])
    # independent count: projector (1024·3 → 2048 → 4096) + LoRA r=64 on q (4096→4096), v (4096→1024) × 32
    proj = 3072 * 2048 + 2048 + 2048 * 4096 + 4096
    lora = 32 * (64 * 4096 + 4096 * 64 + 64 * 4096 + 1024 * 64)
    assert trainable == proj + lora
    assert round(trainable / 1e6) == 42


def test_new_token_embeddings_are_the_mean_row_whatever_the_thread_count(caplog):
    """The rows added for the special tokens are the float64 mean of the existing rows, bit for bit the
    same in a process of one thread and one of two (two one-thread ranks of a run on a 2-core machine
    must build the same frozen weights as one process), without transformers' note on its own draw."""
    import logging

    from llama_avsr.config import SPECIAL_TOKENS, LLMConfig
    from llama_avsr.models.llm import load_llm

    cfg = LLMConfig(source=None, arch="tiny-llama", lora=None)
    threads = torch.get_num_threads()
    built = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)  # random weights: the same draw for both builds
            with caplog.at_level(logging.WARNING):
                llm = load_llm(cfg, vocab_size=None)
            built.append(llm.get_input_embeddings().weight.detach().clone())
    finally:
        torch.set_num_threads(threads)
    assert "multivariate normal" not in caplog.text
    w = built[0]
    added = len(SPECIAL_TOKENS) + 1  # vocab_size=None: the special tokens and a pad token
    old = w.shape[0] - added
    mean = w[:old].double().mean(0).to(w.dtype)
    assert all(torch.equal(row, mean) for row in w[old:])
    assert torch.equal(built[0], built[1])
