"""CTranslate2 Whisper model → Hugging Face ``WhisperForConditionalGeneration`` directory, without ctranslate2.

The CTranslate2 binary format (``model.bin``; see ``python/ctranslate2/specs/model_spec.py`` ``_serialize``
and ``src/models/model.cc`` in CTranslate2), all integers little-endian::

    u32 binary_version
    if version >= 2: string spec_name, u32 spec_revision
    u32 num_variables, then per variable:
        string name, u8 rank, u32 shape[rank],
        version >= 4: u8 dtype_id, u32 num_bytes      (dtype ids: float32 int8 int16 int32 float16 bfloat16)
        version <  4: u8 item_size, u32 num_items     (1 → int8, 2 → int16, 4 → float32)
        raw bytes (row-major)
    if version >= 3: u32 num_aliases, then per alias: string alias, string target
    string = u16 length (including a trailing NUL) + UTF-8 bytes + NUL

Weight mapping (CTranslate2 ``WhisperSpec`` → ``transformers`` names):

- self-attention ``linear_0`` = [q; k; v] fused along the output dim → ``q_proj``/``k_proj``/``v_proj``.
  ``k_proj`` has no bias in Whisper; CTranslate2 stores zeros there (and a key bias would not change the
  softmax anyway: it adds the same q·b to every key's score);
- cross-attention ``linear_0`` = q, ``linear_1`` = [k; v], ``linear_2`` = out; self-attention ``linear_1`` = out;
- ``ffn/linear_0|1`` → ``fc1``/``fc2``; ``gamma``/``beta`` → LayerNorm ``weight``/``bias``;
- ``position_encodings/encodings`` → ``embed_positions.weight``; ``decoder/embeddings`` → ``embed_tokens``;
- ``decoder/projection`` (an alias of the embeddings) → ``proj_out``, tied.

Weights are written as float32 (the packaged models are float16; int8/int16 weights are dequantised with
their ``*_scale``).  The special token ids, suppress lists and alignment heads come from the CTranslate2
``config.json`` and ``tokenizer.json`` beside ``model.bin``; sizes come from the tensor shapes.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CT2_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.float16,
    torch.bfloat16,
)
_LEGACY_ITEM_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.float32}
_MAX_BINARY_VERSION = 6
_WHISPER_SPEC = "WhisperSpec"
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU

# Whisper front end (the openai/whisper audio constants; sizes of the mel filterbank come from the weights)
SAMPLING_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400
CHUNK_LENGTH_S = 30
_SECONDS_PER_TIMESTAMP = 0.02


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands, or not a Whisper one."""


@dataclass
class CT2Model:
    """A parsed CTranslate2 ``model.bin``: variables by name (aliases resolved on lookup)."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str, default: int | None = None) -> int | None:
        """A scalar variable (spec attribute such as ``encoder/num_heads``) as an int, or ``default``."""
        return int(self[name].item()) if name in self else default


class _Cursor:
    """Sequential little-endian reader over a bytearray (zero-copy tensor views)."""

    def __init__(self, data: bytearray, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> int:
        start = self.pos
        if start + n > len(self.data):
            raise CT2FormatError(f"{self.source}: truncated at byte {start} (wanted {n} more bytes)")
        self.pos += n
        return start

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack_from("<" + fmt, self.data, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (n,) = self.unpack("H")
        start = self.take(n)
        return bytes(self.data[start : start + n]).rstrip(b"\0").decode("utf-8")


def read_ct2_model(parts: str | Path | Sequence[str | Path]) -> CT2Model:
    """Parse a CTranslate2 ``model.bin``; ``parts`` may be one file or the pieces of a split file, in order."""
    paths = [Path(parts)] if isinstance(parts, str | Path) else [Path(p) for p in parts]
    data = bytearray(sum(p.stat().st_size for p in paths))
    view, offset = memoryview(data), 0
    for p in paths:
        with p.open("rb") as f:
            offset += f.readinto(view[offset:])
    cur = _Cursor(data, " + ".join(p.name for p in paths))

    (version,) = cur.unpack("I")
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise CT2FormatError(f"{cur.source}: unsupported CTranslate2 binary version {version}")
    spec_name, revision = "", 1
    if version >= 2:
        spec_name = cur.string()
        (revision,) = cur.unpack("I")
    (num_variables,) = cur.unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(num_variables):
        name = cur.string()
        (rank,) = cur.unpack("B")
        shape = cur.unpack(f"{rank}I")
        if version >= 4:
            dtype_id, num_bytes = cur.unpack("BI")
            if dtype_id >= len(CT2_DTYPES):
                raise CT2FormatError(f"{cur.source}: variable {name!r} has unknown dtype id {dtype_id}")
            dtype = CT2_DTYPES[dtype_id]
        else:
            item_size, num_items = cur.unpack("BI")
            dtype, num_bytes = _LEGACY_ITEM_DTYPES[item_size], num_items * item_size
        start = cur.take(num_bytes)
        count = num_bytes // dtype.itemsize
        expected = 1
        for d in shape:
            expected *= d
        if count != expected:
            raise CT2FormatError(f"{cur.source}: variable {name!r} has {count} items for shape {shape}")
        tensor = (
            torch.frombuffer(data, dtype=dtype, count=count, offset=start)
            if count
            else torch.empty(0, dtype=dtype)
        )
        variables[name] = tensor.reshape(shape)
    aliases: dict[str, str] = {}
    if version >= 3:
        (num_aliases,) = cur.unpack("I")
        for _ in range(num_aliases):
            alias = cur.string()
            aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise CT2FormatError(f"{cur.source}: {len(data) - cur.pos} trailing bytes after the model")
    return CT2Model(version, spec_name, revision, variables, aliases)


# --------------------------------------------------------------------------------------------------
# weight mapping


class _Mapper:
    """Takes CT2 variables by name into an HF state dict, remembering which ones were used."""

    def __init__(self, ct2: CT2Model) -> None:
        self.ct2 = ct2
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.ct2:
            raise CT2FormatError(f"CTranslate2 Whisper model lacks variable {name!r}")
        self.used.add(name)
        value = self.ct2[name]
        scale_name = name + "_scale"
        if value.dtype in (torch.int8, torch.int16) and scale_name in self.ct2:
            # quantised weight: q = round(w · scale), one scale per output row (int8) or per tensor (int16)
            self.used.add(scale_name)
            scale = self.ct2[scale_name].float()
            return value.float() / (scale[:, None] if scale.dim() == 1 else scale)
        return value.float()

    def put(self, hf_name: str, value: torch.Tensor) -> None:
        self.state[hf_name] = value.contiguous()

    def linear(self, ct2: str, hf: str) -> None:
        self.put(f"{hf}.weight", self.get(f"{ct2}/weight"))
        self.put(f"{hf}.bias", self.get(f"{ct2}/bias"))

    def layer_norm(self, ct2: str, hf: str) -> None:
        self.put(f"{hf}.weight", self.get(f"{ct2}/gamma"))
        self.put(f"{hf}.bias", self.get(f"{ct2}/beta"))

    def fused(self, ct2: str, hfs: Sequence[str]) -> None:
        """Split a linear fused along the output dim into equal parts; ``k_proj`` parts get no bias."""
        weights = self.get(f"{ct2}/weight").chunk(len(hfs), dim=0)
        biases = self.get(f"{ct2}/bias").chunk(len(hfs), dim=0)
        for hf, w, b in zip(hfs, weights, biases, strict=True):
            self.put(f"{hf}.weight", w)
            if hf.endswith("k_proj"):
                if b.abs().max() > 1e-6:
                    logger.warning(
                        "%s: dropping a non-zero key bias (max %.3g; softmax-invariant)", ct2, b.abs().max()
                    )
            else:
                self.put(f"{hf}.bias", b)


def _count_layers(ct2: CT2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    ids = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if ids != set(range(len(ids))):
        raise CT2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(ids)}")
    return len(ids)


def ct2_whisper_to_hf_state_dict(ct2: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Map a CTranslate2 ``WhisperSpec`` to ``WhisperForConditionalGeneration`` state-dict entries (float32).

    Returns ``(state_dict, dims)``; ``dims`` holds the sizes read from the tensors and scalars
    (``d_model``, ``num_mel_bins``, layers, heads, ffn dims, positions, ``vocab_size``).
    Raises ``CT2FormatError`` for a non-Whisper model, a missing variable, or a variable left unmapped.
    """
    if ct2.spec_name and ct2.spec_name != _WHISPER_SPEC:
        raise CT2FormatError(f"expected a CTranslate2 {_WHISPER_SPEC}, got {ct2.spec_name!r}")
    m = _Mapper(ct2)
    enc_layers, dec_layers = _count_layers(ct2, "encoder"), _count_layers(ct2, "decoder")

    m.linear("encoder/conv1", "model.encoder.conv1")
    m.linear("encoder/conv2", "model.encoder.conv2")
    m.put("model.encoder.embed_positions.weight", m.get("encoder/position_encodings/encodings"))
    m.layer_norm("encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(enc_layers):
        c, h = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        m.fused(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
        m.linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        m.layer_norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        m.linear(f"{c}/ffn/linear_0", f"{h}.fc1")
        m.linear(f"{c}/ffn/linear_1", f"{h}.fc2")
        m.layer_norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")

    embeddings = m.get("decoder/embeddings/weight")
    m.put("model.decoder.embed_tokens.weight", embeddings)
    m.put("model.decoder.embed_positions.weight", m.get("decoder/position_encodings/encodings"))
    m.layer_norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(dec_layers):
        c, h = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        m.fused(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
        m.linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        m.layer_norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        m.fused(f"{c}/attention/linear_0", [f"{h}.encoder_attn.q_proj"])
        m.fused(f"{c}/attention/linear_1", [f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"])
        m.linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
        m.layer_norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        m.linear(f"{c}/ffn/linear_0", f"{h}.fc1")
        m.linear(f"{c}/ffn/linear_1", f"{h}.fc2")
        m.layer_norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")

    projection = m.get("decoder/projection/weight")
    if not torch.equal(projection, embeddings):
        raise CT2FormatError("decoder/projection is not tied to decoder/embeddings (HF Whisper ties them)")
    if "decoder/projection/bias" in ct2:
        bias = m.get("decoder/projection/bias")
        if bias.abs().max() > 0:
            raise CT2FormatError("decoder/projection has a non-zero bias, which HF Whisper cannot hold")
    m.put("proj_out.weight", embeddings)

    # scalar attributes of the spec: heads are needed, the rest must match Whisper's fixed architecture
    d_model = embeddings.shape[1]
    heads = {}
    for side in ("encoder", "decoder"):
        n = ct2.scalar(f"{side}/num_heads")
        if n is None:  # old spec revisions do not store it; every Whisper size uses 64-dim heads
            n = d_model // 64
            logger.warning("%s/num_heads not stored; assuming %d (64-dim heads)", side, n)
        heads[side] = n
        m.used.add(f"{side}/num_heads")
    expected_flags = {
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/activation": _GELU,
        "decoder/alibi": 0,
        "decoder/start_from_zero_embedding": 0,
    }
    for name, want in expected_flags.items():
        got = ct2.scalar(name, want)
        if got != want:
            raise CT2FormatError(f"{name} = {got}, but Whisper needs {want}")
        m.used.add(name)
    m.used.update({"decoder/alignment_heads", "decoder/alignment_layer"})  # decoding hints only

    unused = sorted(set(ct2.variables) - m.used - {ct2.aliases.get(n, n) for n in m.used})
    if unused:
        raise CT2FormatError(f"CTranslate2 variables not mapped to the HF model: {unused[:20]}")

    conv1 = m.state["model.encoder.conv1.weight"]
    dims = {
        "d_model": d_model,
        "num_mel_bins": conv1.shape[1],
        "vocab_size": embeddings.shape[0],
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": heads["encoder"],
        "decoder_attention_heads": heads["decoder"],
        "encoder_ffn_dim": m.state["model.encoder.layers.0.fc1.weight"].shape[0]
        if enc_layers
        else 4 * d_model,
        "decoder_ffn_dim": m.state["model.decoder.layers.0.fc1.weight"].shape[0]
        if dec_layers
        else 4 * d_model,
        "max_source_positions": m.state["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": m.state["model.decoder.embed_positions.weight"].shape[0],
    }
    return m.state, dims


# --------------------------------------------------------------------------------------------------
# special tokens and configs


@dataclass
class WhisperTokens:
    """Special token ids of a Whisper vocabulary, read from ``tokenizer.json``."""

    eot: int
    sot: int
    no_timestamps: int
    prev: int | None
    transcribe: int | None
    translate: int | None
    languages: dict[str, int]

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> WhisperTokens:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        for need in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
            if need not in added:
                raise CT2FormatError(f"{path}: no {need} token; not a Whisper tokenizer")
        sot = added["<|startoftranscript|>"]
        translate = added.get("<|translate|>")
        # language tokens sit between <|startoftranscript|> and <|translate|> in every Whisper vocabulary
        end = translate if translate is not None else sot + 1
        languages = {tok: i for tok, i in added.items() if sot < i < end}
        return cls(
            eot=added["<|endoftext|>"],
            sot=sot,
            no_timestamps=added["<|notimestamps|>"],
            prev=added.get("<|startofprev|>"),
            transcribe=added.get("<|transcribe|>"),
            translate=translate,
            languages=languages,
        )


def convert_ct2_whisper(
    model_parts: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    config_json: str | Path | None = None,
    tokenizer_json: str | Path | None = None,
) -> None:
    """Convert a CTranslate2 Whisper model into a Hugging Face directory that loads offline.

    model_parts: ``model.bin``, or the ordered pieces of a split one.
    out_dir: existing (empty) directory; receives ``config.json``, ``model.safetensors`` (float32),
        ``generation_config.json``, ``preprocessor_config.json`` and the tokenizer files, so that
        ``WhisperModel``/``WhisperForConditionalGeneration``/``WhisperFeatureExtractor``/``AutoTokenizer``
        ``.from_pretrained(out_dir)`` all work.
    config_json, tokenizer_json: the CTranslate2 ``config.json`` / ``tokenizer.json``; default: beside the
        first part.

    Raises ``CT2FormatError`` when the file is not a Whisper model or a weight is left unassigned.
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.tokenization_utils_base import AddedToken

    t0 = time.perf_counter()
    parts = [Path(model_parts)] if isinstance(model_parts, str | Path) else [Path(p) for p in model_parts]
    folder = parts[0].parent
    config_json = Path(config_json) if config_json is not None else folder / "config.json"
    tokenizer_json = Path(tokenizer_json) if tokenizer_json is not None else folder / "tokenizer.json"
    out_dir = Path(out_dir)

    ct2 = read_ct2_model(parts)
    state, dims = ct2_whisper_to_hf_state_dict(ct2)
    ct2_config = json.loads(config_json.read_text(encoding="utf-8")) if config_json.is_file() else {}
    tokens = WhisperTokens.from_tokenizer_json(tokenizer_json)
    # openai/whisper's rule: the multilingual vocabulary has 51865+ entries, the English-only one 51864
    multilingual = dims["vocab_size"] >= 51865

    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot,
        architectures=["WhisperForConditionalGeneration"],
    )
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CT2FormatError(
            f"CT2 → HF Whisper: missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise CT2FormatError("proj_out is not tied to the decoder token embeddings after loading")
    model.eval()

    gen: dict[str, Any] = {
        "decoder_start_token_id": tokens.sot,
        "bos_token_id": tokens.eot,
        "eos_token_id": tokens.eot,
        "pad_token_id": tokens.eot,
        "no_timestamps_token_id": tokens.no_timestamps,
        "prev_sot_token_id": tokens.prev,
        "is_multilingual": multilingual,
        "max_length": dims["max_target_positions"],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "do_sample": False,
    }
    if ct2_config.get("suppress_ids") is not None:
        gen["suppress_tokens"] = list(ct2_config["suppress_ids"])
    if ct2_config.get("suppress_ids_begin") is not None:
        gen["begin_suppress_tokens"] = list(ct2_config["suppress_ids_begin"])
    if ct2_config.get("alignment_heads"):
        gen["alignment_heads"] = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual:
        gen["lang_to_id"] = tokens.languages
        gen["task_to_id"] = {"transcribe": tokens.transcribe, "translate": tokens.translate}
    model.generation_config = GenerationConfig(**gen)
    model.save_pretrained(out_dir)

    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=dims["max_target_positions"],
    )
    # timestamp tokens <|0.00|> … <|30.00|> fill the ids after <|notimestamps|>, as in the hub tokenizers
    n_timestamps = dims["vocab_size"] - len(tokenizer)
    if len(tokenizer) != tokens.no_timestamps + 1 or n_timestamps < 0:
        raise CT2FormatError(
            f"tokenizer has {len(tokenizer)} tokens, model vocabulary {dims['vocab_size']}: cannot align timestamps"
        )
    tokenizer.add_tokens(
        [
            AddedToken(f"<|{i * _SECONDS_PER_TIMESTAMP:.2f}|>", lstrip=False, rstrip=False, normalized=False)
            for i in range(n_timestamps)
        ]
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=dims["num_mel_bins"],
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=CHUNK_LENGTH_S,
        n_fft=N_FFT,
    )
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    # transformers 5 nests the feature extractor in processor_config.json; 4.x reads preprocessor_config.json
    feature_extractor.save_pretrained(out_dir)
    logger.info(
        "converted CTranslate2 Whisper (%s, d_model %d, %d+%d layers) → %s in %.1f s",
        " + ".join(p.name for p in parts),
        dims["d_model"],
        dims["encoder_layers"],
        dims["decoder_layers"],
        out_dir,
        time.perf_counter() - t0,
    )
