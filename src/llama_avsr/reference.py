"""Import released Llama-AVSR checkpoints (``.pth``: the reference code's state dict) into our model.

The reference layout (the published code's state dict) and where each tensor goes:

====================================================================  ==========================================
reference key                                                         ours
====================================================================  ==========================================
``{audio,video,audiovisual}_proj.{0,2,3}.*``                          ``projectors.<stream>.{0,2,3}.*`` (stream
                                                                      named audio / video / audiovisual)
``llm.model.layers.N.self_attn.lora_down_Q.weight`` (r, in)           ``q_proj`` LoRA A (PEFT ``lora_A``)
``llm.model.layers.N.self_attn.lora_up_Q.weight`` (out, r)            ``q_proj`` LoRA B; ``_V`` → ``v_proj``
``{video,audio,audiovisual}_encoder.encoder.layers.N.self_attn.lora_*``  ``encoders.<name>.model.encoder.…`` (same
                                                                      names: AV-HuBERT LoRA)
``llm.model.embed_tokens.weight``, ``llm.lm_head.weight``             only the rows of the added tokens
                                                                      (``<pad>``, ``<audio>`` …)
AV-HuBERT buffers (BatchNorm statistics)                              the encoder's buffers (the reference trains
                                                                      with frozen encoders in train mode, so they
                                                                      drift from the pretrained checkpoint)
every other frozen weight (``llm.model.*``, ``audio_encoder.*`` …)    ignored: the recipe's named base models
                                                                      provide them (they are compared, to catch a
                                                                      checkpoint trained on another base model)
====================================================================  ==========================================

Which ``*_encoder`` prefix an encoder of ours has in the reference follows from what it reads:
``audio_encoder`` (audio only), ``video_encoder`` (video only), ``audiovisual_encoder`` (both).

Omni-AVSR / Llama-MTSK checkpoints (the same ``AVSR_LLMs`` module with Matryoshka projectors and task LoRA):

====================================================================  ==========================================
``{audio,video}_proj.I.{0,2,3}.*`` (one projector per rate)           ``projectors.<stream>.x<k>.*``, k the I-th
                                                                      of the stream's ``compression.ratios``
``{audio,video}_proj.{0,2,3}.*`` (one projector for every rate)       ``projectors.<stream>.*``
                                                                      (``projector.shared_across_rates``)
``…self_attn.lora_{down,up}_{Q,V}.{audio,video,audiovisual}.weight``  the LoRA adapter of task asr / vsr / avsr
                                                                      (``lora.strategy: specific``, by task)
``…self_attn.lora_{down,up}_{Q,V}_shared.weight``                     the shared adapter of ``shared+specific``
====================================================================  ==========================================

Llama-MTSK checkpoints (one task, Matryoshka rates; its LoRA strategies MS / SS / MSS):

====================================================================  ==========================================
``…self_attn.lora_{down,up}_{Q,V}.weight`` (MS: one LoRA for every    the one adapter (``lora.strategy: shared``)
rate)
``…self_attn.local_loras.I.lora_{down,up}_{Q,V}.weight`` (SS: one     the adapter of the I-th rate combination
LoRA per rate)                                                        (``specific``, ``specific_to: rates``)
``…self_attn.global_lora.lora_{down,up}_{Q,V}.weight`` (MSS: the      the shared adapter of ``shared+specific``
global LoRA beside the local ones)                                    (``specific_to: rates``)
====================================================================  ==========================================

The reference sums the task (or local) and shared (or global) adapters before one ``alpha / reduction``
scaling; PEFT scales each active adapter by the same factor, the same map. The Llama-MTSK layout is that of
its public ``Llama_MatryLoRA.py`` (``LoRA`` modules in ``local_loras`` / ``global_lora``; in the first
commits of the Omni-AVSR repository). That code never ties a local LoRA to a rate (the ``matrylora_index``
its attention takes is not set from the rates in any public model file), so the I-th local LoRA is taken to
be the I-th rate combination in the order the reference builds its Matryoshka sequences
(:func:`reference_rate_order`): for one modality the order of its ``downsample_ratio_*`` list (our
``compression.ratios``), for AVSR the video rate outer and the audio rate inner. Rate-specific adapters of
a multi-task model, and ``specific_to: task+rates``, have no public layout to import.

LoRA semantics.  The reference computes ``q = W_q x + up(down(x)) · alpha / reduction`` with bottleneck
r = hidden / reduction; our PEFT LoRA computes ``W_q x + B(A(x)) · lora_alpha / r`` with
``lora_alpha = (alpha / reduction) · r`` (:func:`llama_avsr.models.llm.apply_lora`), the same map when
the recipe's r equals the checkpoint's.  The import checks that r (from the tensor shapes) and the
scaling of every built LoRA module agree, and fails with the setting to change when they do not.

Files are read with ``torch.load(weights_only=True)`` (``llama_avsr.safe_load``): no pickled code runs.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_avsr import safe_load
from llama_avsr.config import SHARED_ADAPTER, rates_key
from llama_avsr.errors import UserError
from llama_avsr.experiment import ExperimentConfig
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.llm import base_causal_lm

log = logging.getLogger(__name__)

#: top-level attributes of the reference ``AVSR_LLMs`` module
REFERENCE_TOPS: tuple[str, ...] = (
    "llm.",
    "audio_proj.",
    "video_proj.",
    "audiovisual_proj.",
    "audio_encoder.",
    "video_encoder.",
    "audiovisual_encoder.",
)
#: where each encoder kind keeps the wrapped model whose parameter names match the reference's
ENCODER_INNER: dict[str, str] = {"whisper": "encoder", "wavlm": "model", "avhubert": "model"}
#: targets the reference puts LoRA on (its K and O adapters are commented out)
REFERENCE_LORA_TARGETS = ("q_proj", "v_proj")
EMBED_KEY = "llm.model.embed_tokens.weight"
HEAD_KEY = "llm.lm_head.weight"
#: tolerance when comparing frozen weights with the named base models (the reference trains in bf16)
BASE_RTOL, BASE_ATOL = 1e-2, 1e-5

_PEFT_LORA = re.compile(r"^(?P<pre>.*\.self_attn)\.(?P<t>[qv])_proj\.lora_(?P<ab>[AB])\.(?P<ad>\w+)\.weight$")
_REF_LORA = re.compile(r"^llm\..*\.lora_(down|up)_[A-Z](_shared)?(\.[a-z]+)?\.weight$")
#: the reference's modality names of the tasks (Omni-AVSR's task-specific LoRA keys)
REFERENCE_TASKS: dict[str, str] = {"asr": "audio", "vsr": "video", "avsr": "audiovisual"}
#: how Llama-MTSK nests its streams' rates when it builds the audio-visual sequences (outer first)
REFERENCE_NESTING: tuple[str, ...] = ("video", "audio")
_REF_PROJ = re.compile(r"^[a-z]+_proj\.\d+\.")
_WEIGHT_NORM = {
    ".parametrizations.weight.original0": ".weight_g",
    ".parametrizations.weight.original1": ".weight_v",
}


class ReferenceCheckpointError(UserError, ValueError):
    """A file that is not a Llama-AVSR checkpoint, or one that does not match the recipe."""


# --------------------------------------------------------------------------------------------------
# reading


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a reference ``.pth`` (bare state dict) or Lightning ``.ckpt`` (``state_dict`` with ``model.``
    prefixes) with ``torch.load(weights_only=True)``; returns the reference state dict.

    Raises :class:`ReferenceCheckpointError` naming the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(f"{path}: no such checkpoint file")
    # argparse.Namespace: the hyper-parameters Lightning stores; a plain attribute container
    obj = safe_load.load(
        path, allow={"argparse.Namespace": argparse.Namespace}, error=ReferenceCheckpointError
    )
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint of the reference's ModelModule_LLM
    if not isinstance(obj, Mapping):
        raise ReferenceCheckpointError(f"{path}: not a state dict (a {type(obj).__name__})")
    state = {str(k): v for k, v in obj.items()}
    if state and not any(k.startswith(REFERENCE_TOPS) for k in state):
        if all(k.startswith("model.") for k in state):
            state = {k[len("model.") :]: v for k, v in state.items()}
    if not any(k.startswith(REFERENCE_TOPS) for k in state):
        raise ReferenceCheckpointError(
            f"{path}: not a Llama-AVSR checkpoint: no keys under {', '.join(t + '*' for t in REFERENCE_TOPS)} "
            f"(found e.g. {sorted(state)[:5]})"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReferenceCheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}")
    return {_rename_weight_norm(k): v for k, v in state.items()}


def _rename_weight_norm(key: str) -> str:
    for new, old in _WEIGHT_NORM.items():
        key = key.replace(new, old)
    return key


# --------------------------------------------------------------------------------------------------
# key mapping


def reference_encoder_prefix(exp_model, encoder: str) -> str:
    """``audio_encoder`` / ``video_encoder`` / ``audiovisual_encoder``: by what the encoder reads."""
    inputs = {m for s in exp_model.streams.values() if s.encoder == encoder for m in s.inputs}
    if inputs == {"audio"}:
        return "audio_encoder"
    if inputs == {"video"}:
        return "video_encoder"
    return "audiovisual_encoder"


def reference_key(model: AVSRModel, key: str) -> str | None:
    """The reference checkpoint key of one of our state-dict keys (``None``: no counterpart)."""
    cfg = model.cfg
    if key.startswith("projectors."):
        stream, rest = key[len("projectors.") :].split(".", 1)
        if rest.startswith("x") and rest.split(".", 1)[0][1:].isdigit():  # one projector per rate
            rate, rest = rest.split(".", 1)
            index = cfg.streams[stream].compression.rates.index(int(rate[1:]))
            return f"{stream}_proj.{index}.{rest}"
        return f"{stream}_proj.{rest}"
    if key.startswith("encoders."):
        name, rest = key[len("encoders.") :].split(".", 1)
        inner = ENCODER_INNER.get(cfg.encoders[name].kind)
        if inner is None or not rest.startswith(inner + "."):
            return None
        return f"{reference_encoder_prefix(cfg, name)}.{rest[len(inner) + 1 :]}"
    if key.startswith("llm."):
        rest = key[len("llm.") :]
        if rest.startswith("base_model.model."):  # PEFT wrapper
            rest = rest[len("base_model.model.") :]
        m = _PEFT_LORA.match(rest)
        if m:
            kind = "down" if m["ab"] == "A" else "up"
            return _reference_lora_key(cfg, f"llm.{m['pre']}", f"lora_{kind}_{m['t'].upper()}", m["ad"])
        if ".lora_" in rest:
            return None
        return "llm." + rest.replace(".base_layer.", ".")
    return None


def reference_rate_order(cfg) -> list[dict[str, int]] | None:
    """The rate combinations in the order of Llama-MTSK's local LoRAs (``local_loras.I``): the order the
    reference builds its Matryoshka sequences in — one modality's rates as listed, AVSR's with the video
    rate outer and the audio rate inner. ``None`` for a multi-task model (no public layout)."""
    if len(cfg.task_names) != 1:
        return None
    streams = cfg.task_streams(cfg.default_task)
    nesting = sorted(streams, key=lambda s: REFERENCE_NESTING.index(s) if s in REFERENCE_NESTING else -1)
    combos = [
        dict(zip(nesting, ks, strict=True))
        for ks in itertools.product(*(cfg.streams[s].compression.rates for s in nesting))
    ]
    return [{s: c[s] for s in streams} for c in combos]  # our stream order: the adapter names'


def _reference_lora_key(cfg, pre: str, name: str, adapter: str) -> str | None:
    """The reference key of one of our LoRA adapters' matrices (``name``: ``lora_down_Q`` …) in the
    attention module ``pre``: Llama-AVSR's one adapter and Omni-AVSR-S / Llama-MTSK MS (``name``),
    Omni-AVSR-ST's shared one (``name_shared``), a task's (``name.audio`` / ``.video`` / ``.audiovisual``),
    Llama-MTSK's local LoRA of a rate combination (``local_loras.I.name``) and its global one
    (``global_lora.name``); ``None``: no counterpart."""
    lora = cfg.llm.lora
    if adapter == SHARED_ADAPTER:
        if lora.strategy == "shared":
            return f"{pre}.{name}.weight"
        if lora.specific_to == "task":
            return f"{pre}.{name}_shared.weight"
        if lora.specific_to == "rates":
            return f"{pre}.global_lora.{name}.weight"
        return None
    if lora.specific_to == "task" and adapter in REFERENCE_TASKS:
        return f"{pre}.{name}.{REFERENCE_TASKS[adapter]}.weight"
    if lora.specific_to == "rates":
        order = [rates_key(r) for r in reference_rate_order(cfg) or []]
        if adapter in order:
            return f"{pre}.local_loras.{order.index(adapter)}.{name}.weight"
    return None


# --------------------------------------------------------------------------------------------------
# import


@dataclass
class ImportReport:
    """What :func:`load_reference_state` did with each tensor of the checkpoint."""

    checkpoint: str
    trainable: dict[str, str] = field(default_factory=dict)  # ours → reference
    added_token_rows: int = 0
    buffers: list[str] = field(default_factory=list)  # encoder buffers taken from the checkpoint
    buffers_differing: int = 0
    from_checkpoint: list[str] = field(default_factory=list)  # frozen weights of random-init parts
    ignored: list[str] = field(default_factory=list)  # frozen base weights, from the named models
    base_compared: int = 0
    base_differing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"imported {len(self.trainable)} trainable tensors from {self.checkpoint}",
            f"added-token embedding rows taken from the checkpoint: {self.added_token_rows}",
            f"encoder buffers taken from the checkpoint: {len(self.buffers)} "
            f"({self.buffers_differing} differ from the base encoder)",
        ]
        if self.from_checkpoint:
            lines.append(
                f"frozen weights of random-init components taken from the checkpoint: {len(self.from_checkpoint)}"
            )
        lines.append(
            f"frozen base weights ignored (the recipe's named base models provide them): {len(self.ignored)}"
        )
        if self.base_compared:
            lines.append(
                f"frozen base weights compared with the named base models: {self.base_compared}, "
                f"differing: {len(self.base_differing)}"
                + (f" (e.g. {self.base_differing[:3]})" if self.base_differing else "")
            )
        lines += self.notes
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "trainable_tensors": len(self.trainable),
            "added_token_rows": self.added_token_rows,
            "encoder_buffers": len(self.buffers),
            "encoder_buffers_differing": self.buffers_differing,
            "frozen_from_checkpoint": len(self.from_checkpoint),
            "frozen_ignored": len(self.ignored),
            "base_compared": self.base_compared,
            "base_differing": self.base_differing[:20],
            "notes": self.notes,
        }


def check_lora_semantics(model: AVSRModel, state: Mapping[str, torch.Tensor], source: str) -> None:
    """The recipe's LLM LoRA must be the reference's: same targets, same r as the checkpoint, scaling
    ``alpha / reduction`` on every built module."""
    lora = model.cfg.llm.lora
    ref_downs = {k: v for k, v in state.items() if _REF_LORA.match(k) and ".lora_down_" in k}
    if lora is None:
        if ref_downs:
            raise ReferenceCheckpointError(
                f"{source}: the checkpoint has LLM LoRA weights ({len(ref_downs)} adapters) but the recipe has "
                "llm.lora: null; use a recipe with the reference LoRA (reduction, alpha)"
            )
        return
    extra = sorted(set(lora.targets) - set(REFERENCE_LORA_TARGETS))
    if extra:
        raise ReferenceCheckpointError(
            f"{source}: the recipe puts LoRA on {extra}; the reference has LoRA on q_proj and v_proj only"
        )
    hidden = model.hidden_size
    r = lora.rank_for(hidden)
    if lora.rank is not None and lora.rank != max(1, hidden // lora.reduction):
        raise ReferenceCheckpointError(
            f"{source}: llm.lora.rank = {lora.rank} overrides hidden/reduction = {hidden // lora.reduction}; the "
            "reference defines r = hidden / reduction and scaling = alpha / reduction, so set rank: null"
        )
    ranks = sorted({int(v.shape[0]) for v in ref_downs.values()})
    if ranks and ranks != [r]:
        implied = ", ".join(f"{hidden / x:g}" for x in ranks)
        raise ReferenceCheckpointError(
            f"{source}: the checkpoint's LLM LoRA has r = {ranks[0] if len(ranks) == 1 else ranks}, the recipe gives "
            f"r = {r} (hidden {hidden} / reduction {lora.reduction}); the checkpoint implies reduction_lora = "
            f"{implied}: set model.llm.lora.reduction (and alpha) to the values it was trained with"
        )
    want = lora.alpha / lora.reduction
    for name, module in base_causal_lm(model.llm).named_modules():
        scaling = getattr(module, "scaling", None)
        if not isinstance(scaling, dict):
            continue
        for adapter, value in scaling.items():
            got_r = module.r[adapter]
            if got_r != r or not math.isclose(value, want, rel_tol=1e-6):
                raise ReferenceCheckpointError(
                    f"{source}: LoRA module {name} ({adapter}) has r {got_r}, scaling {value:g}; the reference "
                    f"semantics need r {r}, scaling alpha/reduction = {want:g}"
                )


def _differs(ours: torch.Tensor, ref: torch.Tensor, skip_rows: torch.Tensor | None = None) -> bool:
    """Whether two same-shape tensors differ beyond bf16 rounding (row chunks: big embeddings)."""
    if not ours.is_floating_point():
        return not torch.equal(ours.cpu(), ref.cpu())
    keep = None
    if skip_rows is not None:
        keep = torch.ones(ours.shape[0], dtype=torch.bool)
        keep[skip_rows] = False
    step = 8192
    for i in range(0, max(1, ours.shape[0] if ours.dim() else 1), step):
        a = ours[i : i + step] if ours.dim() else ours
        b = ref[i : i + step] if ref.dim() else ref
        if keep is not None:
            a, b = a[keep[i : i + step].to(a.device)], b[keep[i : i + step]]
        if not torch.allclose(a.float().cpu(), b.float(), rtol=BASE_RTOL, atol=BASE_ATOL):
            return True
    return False


def load_reference_state(
    model: AVSRModel,
    state: Mapping[str, torch.Tensor],
    source: str = "<checkpoint>",
    check_base: bool = True,
) -> ImportReport:
    """Load a reference state dict into ``model`` (built from the recipe); returns what was done.

    Every trainable tensor of ``model`` must come from the checkpoint with the same shape; checkpoint
    tensors that look trainable (LoRA, projectors) but have no place in the recipe are an error.
    """
    check_lora_semantics(model, state, source)
    report = ImportReport(checkpoint=source)
    used: set[str] = set()

    # trainable: every tensor accounted for, every shape equal
    own = model.trainable_state_dict()
    missing, shapes, trainable = [], [], {}
    for key, value in own.items():
        ref = reference_key(model, key)
        if ref is None or ref not in state:
            missing.append(ref or key)
        elif state[ref].shape != value.shape:
            shapes.append(f"{ref}: checkpoint {tuple(state[ref].shape)} vs recipe {tuple(value.shape)}")
        else:
            trainable[key] = state[ref]
            report.trainable[key] = ref
            used.add(ref)
    stray = sorted(
        k for k in state if k not in used and (_REF_LORA.match(k) or ".lora_" in k or _REF_PROJ.match(k))
    )
    if missing or shapes or stray:
        hints = []
        if any("_encoder." in k and ".lora_" in k for k in stray):
            hints.append("the checkpoint has AV-HuBERT LoRA: set options: {lora: true} on that encoder")
        lora = model.cfg.llm.lora
        if lora is not None and lora.strategy != "shared" and reference_rate_order(model.cfg) is None:
            if "rates" in lora.specific_to:
                hints.append(
                    "rate-specific LoRA has a public layout only in single-task Llama-MTSK checkpoints "
                    "(local_loras.I / global_lora); Omni-AVSR's specific adapters are per task"
                )
        if any(_REF_PROJ.match(m) for m in missing):
            have = sorted({k.split(".")[0] for k in state if _REF_PROJ.match(k)})
            hints.append(
                f"the checkpoint's projectors are {have}; our stream names must be audio / video / audiovisual "
                "and the projector sizes (hidden, layernorm) the checkpoint's"
            )
        raise ReferenceCheckpointError(
            f"{source}: does not match the recipe"
            + (f"; missing in the checkpoint: {_short(missing)}" if missing else "")
            + (f"; shape mismatch: {_short(shapes)}" if shapes else "")
            + (f"; checkpoint tensors with no place in the recipe: {_short(stray)}" if stray else "")
            + (f" ({'; '.join(hints)})" if hints else "")
        )

    # frozen: what the named base models cannot give back is taken from the checkpoint
    frozen_updates: dict[str, torch.Tensor] = {}
    random = tuple(
        [f"encoders.{n}." for n, e in model.cfg.encoders.items() if e.frozen and e.source is None]
        + (["llm."] if model.cfg.llm.source is None else [])
    )
    base = base_causal_lm(model.llm)
    ids = torch.tensor(sorted({model.ids.pad, *model.ids.added.values()}), dtype=torch.long)
    absent_random = []
    compare: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    buffers = {n for n, _ in model.named_buffers()}
    persistent = set(model.state_dict().keys())
    for key, value in tensors.items():
        if key in own or key not in persistent:
            continue
        ref = reference_key(model, key)
        if ref is None or ref not in state:
            if key.startswith(random):
                absent_random.append(ref or key)
            continue
        if state[ref].shape != value.shape:
            raise ReferenceCheckpointError(
                f"{source}: frozen tensor {ref} has shape {tuple(state[ref].shape)}, the recipe's "
                f"{tuple(value.shape)}: the checkpoint was trained with another base model"
            )
        used.add(ref)
        if key.startswith(random):
            frozen_updates[key] = state[ref]
            report.from_checkpoint.append(ref)
        elif key in buffers and key.startswith("encoders."):
            frozen_updates[key] = state[ref]
            report.buffers.append(ref)
            report.buffers_differing += int(not torch.equal(value.cpu(), state[ref].to(value.dtype)))
        elif ref in (EMBED_KEY, HEAD_KEY):
            compare.append((ref, value, state[ref], ids))
        else:
            report.ignored.append(ref)
            compare.append((ref, value, state[ref], None))
    if absent_random:
        raise ReferenceCheckpointError(
            f"{source}: the recipe builds {random} with random weights (source: null), so their frozen weights "
            f"must come from the checkpoint, which lacks {_short(absent_random)}"
        )

    # rows of the added tokens (created by the reference's resize, not part of any base model)
    if model.cfg.llm.source is not None:
        emb = base.get_input_embeddings()
        head = base.get_output_embeddings()
        tied = head is None or head.weight.data_ptr() == emb.weight.data_ptr()
        for ref, layer in ((EMBED_KEY, emb), (HEAD_KEY, None if tied else head)):
            if layer is None:
                continue
            if ref not in state:
                report.notes.append(
                    f"{ref} is not in the checkpoint: the added tokens keep freshly initialised embeddings"
                )
                continue
            frozen_updates[f"rows:{ref}"] = state[ref][ids]
            report.added_token_rows += len(ids)
            report.ignored.append(ref)  # its other rows: the base model's

    report.ignored += sorted(k for k in state if k not in used and k not in report.ignored)
    if check_base:
        for ref, ours, theirs, skip in compare:
            report.base_compared += 1
            if _differs(ours.detach(), theirs, skip):
                report.base_differing.append(ref)
        if report.base_differing:
            report.notes.append(
                f"warning: {len(report.base_differing)} frozen weights differ from the recipe's named base models "
                f"(e.g. {report.base_differing[:3]}): was the checkpoint trained on another base model?"
            )
            log.warning("%s: %s", source, report.notes[-1])

    # all checks passed: write
    model.load_trainable(trainable)
    with torch.no_grad():
        for key, value in frozen_updates.items():
            if key.startswith("rows:"):
                layer = (
                    base.get_input_embeddings()
                    if key == f"rows:{EMBED_KEY}"
                    else base.get_output_embeddings()
                )
                layer.weight.index_copy_(0, ids.to(layer.weight.device), value.to(layer.weight))
            else:
                tensors[key].copy_(value)
    return report


def _short(items: list[str], limit: int = 8) -> str:
    more = f" … ({len(items)} in all)" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def import_reference(
    checkpoint: str | Path,
    exp: ExperimentConfig,
    out: str | Path,
    check_base: bool = True,
    model: AVSRModel | None = None,
) -> tuple[AVSRModel, ImportReport]:
    """Import a released Llama-AVSR checkpoint with the recipe ``exp`` into the model directory ``out``.

    model: an already built ``AVSRModel(exp.model)`` (tests); built from the recipe otherwise.
    """
    from llama_avsr.model_dir import save_model_dir

    state = read_reference_checkpoint(checkpoint)
    model = model if model is not None else AVSRModel(exp.model)
    report = load_reference_state(model, state, source=str(checkpoint), check_base=check_base)
    name = Path(checkpoint).name
    provenance = {
        "notes": [
            f"Imported from the released Llama-AVSR checkpoint `{name}` (`llama-avsr import-reference`): "
            f"{len(report.trainable)} trainable tensors; {len(report.ignored)} frozen base weights in the file "
            "ignored in favour of the named base models.",
            *report.notes,
        ],
        "reference_checkpoint": name,
        "import": report.as_dict(),
    }
    save_model_dir(model.eval(), exp, out, provenance=provenance)
    return model, report
