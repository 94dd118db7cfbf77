"""A trained model as a directory: everything needed to rebuild it, without pickles.

    <dir>/config.json              the experiment config (model, data, train, decode), JSON
    <dir>/trainable.safetensors    trainable weights (projectors, LoRA, trained encoders + their buffers)
    <dir>/frozen.safetensors       frozen tensors that the named base models cannot give back (below)
    <dir>/README.md                a generated model card (configuration, evaluation results if any)
    <dir>/results.json             evaluation results, when present
    <dir>/provenance.json          where the weights came from (imported checkpoint, merged export), if not trained here
    <dir>/llm/                     a complete Hugging Face LLM folder, when the config says ``llm.source: ./llm``
                                   (written by ``llama-avsr export --merge-lora``)

Frozen base weights (LLM, pretrained encoders) are not copied: the config names them (hub id, embedded
name or path) and they are loaded from there.  ``frozen.safetensors`` keeps what those names cannot
reproduce:

* ``added_tokens.ids`` / ``added_tokens.input_embeddings`` / ``added_tokens.output_embeddings``: the LLM
  embedding rows of the tokens we add (``<pad>``, ``<audio>`` …), which are created when the embedding
  matrix is resized, not by the base model (the output rows only when input and output are untied);
* the buffers of frozen encoders (BatchNorm statistics move when a frozen encoder runs in train mode,
  as the reference code does);
* every frozen tensor of a component built with random weights (``source: null``), so that such a
  directory still rebuilds exactly (tests, encoders trained from scratch and then frozen).

Paths in the config that start with ``./`` are relative to the directory.  Wherever a directory is
accepted, a Hugging Face hub repository id (``owner/name``) works too: it is fetched with
``huggingface_hub.snapshot_download`` (the local hub cache only, when ``HF_HUB_OFFLINE=1``) and loaded
from the snapshot.  :func:`push_to_hub` uploads a directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llama_avsr.errors import UserError
from llama_avsr.experiment import ExperimentConfig
from llama_avsr.io import atomic_write_text, update_json
from llama_avsr.models.avsr import AVSRModel, TrainableStateError
from llama_avsr.models.llm import base_causal_lm

log = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "trainable.safetensors"
FROZEN = "frozen.safetensors"
RESULTS = "results.json"
PROVENANCE = "provenance.json"
CARD = "README.md"
LLM_DIR = "llm"
#: config paths with this prefix are relative to the model directory
RELATIVE = "./"

ADDED_IDS = "added_tokens.ids"
ADDED_INPUT = "added_tokens.input_embeddings"
ADDED_OUTPUT = "added_tokens.output_embeddings"

#: what ``push_to_hub`` leaves out: evaluation outputs (per-utterance JSONL, plots) and hidden files
PUSH_IGNORE = ["eval/**", ".*", "**/.*"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelDirError(UserError, ValueError):
    """A model directory that is missing files or does not match its configuration."""


# --------------------------------------------------------------------------------------------------
# frozen tensors the named base models cannot reproduce


def _named_tensors(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_buffer) for every persistent parameter and buffer, tied parameters once."""
    persistent = set(module.state_dict(prefix=prefix).keys())
    for name, p in module.named_parameters(prefix=prefix.rstrip(".")):
        if name in persistent:
            yield name, p, False
    for name, b in module.named_buffers(prefix=prefix.rstrip(".")):
        if name in persistent:
            yield name, b, True


def _random_prefixes(model: AVSRModel) -> tuple[str, ...]:
    """Key prefixes of frozen components that have no weight source (random init)."""
    out = [f"encoders.{n}." for n, e in model.cfg.encoders.items() if e.frozen and e.source is None]
    if model.cfg.llm.source is None:
        out.append("llm.")
    return tuple(out)


def added_token_ids(model: AVSRModel) -> list[int]:
    """Ids of the tokens added to the LLM tokenizer (pad and the modality delimiters), sorted."""
    return sorted({model.ids.pad, *model.ids.added.values()})


def _untied_output(llm: nn.Module) -> nn.Module | None:
    base = base_causal_lm(llm)
    out = base.get_output_embeddings()
    if out is None or out.weight.data_ptr() == base.get_input_embeddings().weight.data_ptr():
        return None
    return out


def frozen_state_dict(model: AVSRModel) -> dict[str, torch.Tensor]:
    """The frozen tensors that go into ``frozen.safetensors`` (see the module docstring).

    Returns detached tensors (views, except the gathered embedding rows), keyed by model state-dict
    names plus the ``added_tokens.*`` entries.
    """
    trainable = set(model.trainable_state_dict())
    random = _random_prefixes(model)
    out: dict[str, torch.Tensor] = {}
    for name, ecfg in model.cfg.encoders.items():
        if not ecfg.frozen:  # saved whole with the trainable weights
            continue
        for key, t, is_buffer in _named_tensors(model.encoders[name], f"encoders.{name}."):
            if key not in trainable and (is_buffer or key.startswith(random)):
                out[key] = t.detach()
    if model.cfg.llm.source is None:
        for key, t, _ in _named_tensors(model.llm, "llm."):
            if key not in trainable:
                out[key] = t.detach()
    else:
        ids = added_token_ids(model)
        index = torch.tensor(ids, dtype=torch.long)
        emb = base_causal_lm(model.llm).get_input_embeddings().weight.detach()
        out[ADDED_IDS] = index
        out[ADDED_INPUT] = emb[index.to(emb.device)]
        head = _untied_output(model.llm)
        if head is not None:
            out[ADDED_OUTPUT] = head.weight.detach()[index.to(head.weight.device)]
    return out


def load_frozen_state(model: AVSRModel, state: dict[str, torch.Tensor], source: str = FROZEN) -> None:
    """Copy tensors written by :func:`frozen_state_dict` into ``model``; clear errors on any mismatch."""
    expected = frozen_state_dict(model)
    random = _random_prefixes(model)
    missing = sorted(k for k in expected if k.startswith(random) and k not in state)
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: saved {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise ModelDirError(
            f"{source}: frozen weights do not match this model configuration"
            + (f"; missing {_short(missing)}" if missing else "")
            + (f"; unexpected {_short(unexpected)}" if unexpected else "")
            + (f"; shape mismatch {_short(shapes)}" if shapes else "")
        )
    if ADDED_IDS in state and not torch.equal(state[ADDED_IDS].long(), expected[ADDED_IDS]):
        raise ModelDirError(
            f"{source}: the tokenizer gives the added tokens ids {expected[ADDED_IDS].tolist()}, but the "
            f"saved embeddings are for ids {state[ADDED_IDS].tolist()} (another tokenizer?)"
        )
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for key, value in state.items():
            if key == ADDED_IDS:
                continue
            if key in (ADDED_INPUT, ADDED_OUTPUT):
                base = base_causal_lm(model.llm)
                layer = base.get_input_embeddings() if key == ADDED_INPUT else _untied_output(model.llm)
                index = state[ADDED_IDS].long().to(layer.weight.device)
                layer.weight.index_copy_(0, index, value.to(layer.weight))
            else:
                tensors[key].copy_(value)


def _short(items: list[str], limit: int = 5) -> str:
    more = f" … ({len(items)} in all)" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise ModelDirError(f"{path}: not a readable safetensors file ({e})") from e


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


# --------------------------------------------------------------------------------------------------
# saving


def _write_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build the directory in a temporary sibling, then rename it over ``out`` (never half-written).

    An existing ``out`` is replaced only when it is empty or a model directory (has ``config.json``);
    it is moved aside (a hidden sibling) until the new one is in place, and only then deleted: a crash
    at any point leaves the old directory or the new one complete on disk.
    """
    out = Path(out)
    if out.exists() and not (out.is_dir() and ((out / CONFIG).is_file() or not any(out.iterdir()))):
        raise ModelDirError(f"{out}: exists and is not a model directory; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fill(tmp)
        _normal_permissions(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old.")) / out.name
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)  # put the old one back
            raise
        finally:
            if old is not None:
                shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a private (0700) directory and safetensors writes 0600 files: give them the
    permissions of ordinary files and folders (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def save_model_dir(
    model: AVSRModel,
    exp: ExperimentConfig,
    out: str | Path,
    state: dict[str, torch.Tensor] | None = None,
    results: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory atomically.

    state: trainable weights to load into ``model`` first (e.g. an average of checkpoints).
    results: evaluation results (``results.json``); provenance: where the weights came from.
    """

    def fill(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps(exp.to_dict(), indent=2))
        if state is not None:
            model.load_trainable(state)
        model.save_trainable(tmp / WEIGHTS)
        _save_safetensors(frozen_state_dict(model), tmp / FROZEN)
        if results:
            (tmp / RESULTS).write_text(json.dumps(results, indent=2))
        if provenance:
            (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2))
        (tmp / CARD).write_text(model_card(exp, model, results, provenance))

    _write_dir(out, fill)
    log.info("model saved to %s", out)
    return Path(out)


def save_pretrained(
    model: AVSRModel,
    out: str | Path,
    exp: ExperimentConfig | None = None,
    results: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a model directory; without ``exp`` the config holds the model section and
    default data / train / decode settings."""
    return save_model_dir(model, exp or ExperimentConfig(model=model.cfg), out, results=results)


# --------------------------------------------------------------------------------------------------
# loading (local directories and hub repositories)


def is_repo_id(text: str) -> bool:
    """``owner/name`` (a Hugging Face hub repository id), as opposed to a file-system path."""
    return bool(_REPO_ID.match(text)) and not text.startswith(".")


def resolve_model_dir(name_or_path: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local model directory, or the local snapshot of a hub repository (downloaded if needed).

    A local directory with a ``config.json`` wins over a hub id of the same spelling.  Downloads use
    ``huggingface_hub.snapshot_download`` (only the local hub cache when ``HF_HUB_OFFLINE`` is set).
    """
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if (local / CONFIG).is_file():
        return local
    if local.exists():  # never taken for a hub id: another model could be downloaded and used
        if (local / "model" / CONFIG).is_file():
            raise ModelDirError(
                f"{local}: a training run folder, not a model directory (no {CONFIG}); "
                f"pass its model: {local / 'model'}"
            )
        raise ModelDirError(f"{local}: not a model directory (no {CONFIG})")
    if not is_repo_id(text):
        raise ModelDirError(f"{text}: no such model directory (nor a hub repository id owner/name)")
    import huggingface_hub

    from llama_avsr.hub import hub_offline

    try:
        snapshot = huggingface_hub.snapshot_download(
            repo_id=text, revision=revision, local_files_only=hub_offline()
        )
    except Exception as e:  # offline, unknown/gated repository, network failure: all "cannot get it"
        raise ModelDirError(
            f"{text}: no local model directory of that name, and the hub repository cannot be fetched "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    path = Path(snapshot)
    if not (path / CONFIG).is_file():
        raise ModelDirError(f"hub repository {text}: not a llama-avsr model (no {CONFIG})")
    return path


def _localize(value: str | None, root: Path) -> str | None:
    """``./x`` in a config → ``<root>/x`` (absolute) when it exists there."""
    if value is not None and value.startswith(RELATIVE) and (root / value).exists():
        return str((root / value).resolve())
    return value


def load_experiment(path: str | Path, revision: str | None = None) -> ExperimentConfig:
    """The experiment config of a model directory (or hub repository), with ``./`` paths made absolute."""
    root = resolve_model_dir(path, revision)
    cfg_file = root / CONFIG
    try:
        exp = ExperimentConfig.from_dict(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as e:
        raise ModelDirError(f"{cfg_file}: invalid configuration ({e})") from e
    m = exp.model
    for ecfg in m.encoders.values():
        ecfg.source = _localize(ecfg.source, root)
    m.llm.source = _localize(m.llm.source, root)
    m.llm.tokenizer = _localize(m.llm.tokenizer, root)
    return exp


def load_model_dir(
    path: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> tuple[AVSRModel, ExperimentConfig]:
    """Rebuild the model from its config and load its weights (safetensors and JSON: no pickle).

    path: a model directory or a hub repository id (``owner/name``; ``revision``: branch, tag or commit).
    Returns the model in eval mode on ``device`` and the experiment config.
    """
    root = resolve_model_dir(path, revision)
    exp = load_experiment(root)
    if not (root / WEIGHTS).is_file():
        raise ModelDirError(f"{root}: no {WEIGHTS} (an incomplete model directory)")
    model = AVSRModel(exp.model)
    if (root / FROZEN).is_file():
        load_frozen_state(model, _read_safetensors(root / FROZEN), source=str(root / FROZEN))
    elif _random_prefixes(model):
        raise ModelDirError(
            f"{root}: no {FROZEN}, but the config builds {_random_prefixes(model)} with random weights"
        )
    else:  # directories written before frozen.safetensors existed
        log.info("%s: no %s; added-token embeddings are freshly initialised", root, FROZEN)
    try:
        model.load_trainable(root / WEIGHTS)
    except TrainableStateError as e:
        raise ModelDirError(f"{root / WEIGHTS}: {e}") from e
    return model.to(device).eval(), exp


#: the part of ``train.init_from`` that names the LLM's LoRA weights (the other parts are streams)
LLM_PART = "llm"


#: config fields that change how weights are stored or run, not what they are: ``init_from`` ignores them
_NOT_WEIGHTS = ("dtype", "train_mode", "gradient_checkpointing", "attn_implementation", "dropout")


def _differences(a: Any, b: Any) -> list[str]:
    """The dotted keys where two config dataclasses differ in what their weights mean."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)

    def walk(x: Any, y: Any, where: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted((set(x) | set(y)) - set(_NOT_WEIGHTS))
            return [d for k in keys for d in walk(x.get(k), y.get(k), f"{where}.{k}")]
        return [] if x == y else [f"{where.lstrip('.')}: {y!r} there, {x!r} here"]

    return walk(da, db, "")


def _check_random_base(
    model: AVSRModel, frozen: dict[str, torch.Tensor] | None, mine: str, theirs: str, where: str
) -> None:
    """A part trained on a component with random frozen weights (``source: null``: tests, from-scratch
    builds) only fits a model whose component has the same random weights (the same seed): compare the
    frozen parameters under prefix ``mine`` here with ``theirs`` in the source's frozen tensors."""
    if frozen is None:
        raise ModelDirError(f"{where}: no {FROZEN}, and {mine.rstrip('.')} has random frozen weights here")
    for key, p in model.named_parameters():
        if p.requires_grad or not key.startswith(mine):
            continue
        t = frozen.get(theirs + key[len(mine) :])
        if t is not None and t.shape == p.shape and not torch.equal(t.to(p.dtype), p.detach().cpu()):
            raise ModelDirError(
                f"{where}: {mine.rstrip('.')} has random frozen weights (source: null) that differ from the "
                f"source's ({key}): build both with the same seed, or give it a source"
            )


def _part_keys(
    model: AVSRModel,
    source: ExperimentConfig,
    part: str,
    where: str,
    frozen: dict[str, torch.Tensor] | None,
) -> dict[str, str]:
    """Trainable key of ``model`` → key in the source model's weights, for one ``init_from`` part; the
    part's configuration must be the source's (else a one-line :class:`ModelDirError`), and so must the
    random frozen weights it was trained on, if any (``frozen``: the source's frozen tensors)."""
    cfg = model.cfg
    if part == LLM_PART:
        diff = _differences(cfg.llm, source.model.llm)
        if diff:
            raise ModelDirError(f"{where}: its LLM differs from this model's ({'; '.join(diff[:3])})")
        if cfg.llm.source is None:
            _check_random_base(model, frozen, "llm.", "llm.", where)
        return {k: k for k in model.trainable_state_dict() if k.startswith("llm.")}
    theirs = source.model.streams.get(part)
    if theirs is None:
        raise ModelDirError(
            f"{where}: it has no stream {part!r} (its streams: {sorted(source.model.streams)})"
        )
    ours = cfg.streams[part]
    diff = [
        f"{key}.{d}"
        for key in ("compression", "projector")
        for d in _differences(getattr(ours, key), getattr(theirs, key))
    ]
    if ours.inputs != theirs.inputs:
        diff.append(f"inputs: {theirs.inputs} there, {ours.inputs} here")
    their_encoder = source.model.encoders[theirs.encoder]
    diff += [f"encoder.{d}" for d in _differences(cfg.encoders[ours.encoder], their_encoder)]
    if diff:
        raise ModelDirError(f"{where}: its stream {part!r} is built differently ({'; '.join(diff[:3])})")
    if cfg.llm.source is None:  # the projector writes into the LLM's embedding space
        _check_random_base(model, frozen, "llm.", "llm.", where)
    mine = f"encoders.{ours.encoder}."
    enc = cfg.encoders[ours.encoder]
    if enc.frozen and enc.source is None:
        _check_random_base(model, frozen, mine, f"encoders.{theirs.encoder}.", where)
    keys = {}
    for k in model.trainable_state_dict():
        if k.startswith(f"projectors.{part}."):
            keys[k] = k
        elif k.startswith(mine):  # what trains in the encoder: all of it, or its LoRA
            keys[k] = f"encoders.{theirs.encoder}.{k[len(mine) :]}"
    return keys


def init_from_model_dirs(model: AVSRModel, sources: dict[str, str]) -> dict[str, int]:
    """Start ``model`` from parts of trained models (``train.init_from``): ``sources`` maps a stream name
    (its projector and, when it trains, its encoder) or ``llm`` (the LoRA weights) to a model directory
    or hub id whose part is configured alike. Returns the tensors copied per part. Every tensor of a part
    must be in the source with the same shape; anything else is a one-line :class:`ModelDirError`."""
    copied: dict[str, int] = {}
    cache: dict[str, tuple[ExperimentConfig, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for part, path in sources.items():
        where = f"train.init_from.{part}: {path}"
        if path not in cache:
            try:
                root = resolve_model_dir(path)
                if not (root / WEIGHTS).is_file():
                    raise ModelDirError(f"no {WEIGHTS} (not a model directory)")
                frozen = _read_safetensors(root / FROZEN) if (root / FROZEN).is_file() else None
                cache[path] = (load_experiment(root), _read_safetensors(root / WEIGHTS), frozen)
            except UserError as e:
                raise ModelDirError(f"{where}: {e}") from e
        source, state, frozen = cache[path]
        keys = _part_keys(model, source, part, where, frozen)
        if not keys:
            raise ModelDirError(f"{where}: the part has no trainable weights in this model")
        missing = sorted(v for v in keys.values() if v not in state)
        if missing:
            raise ModelDirError(f"{where}: its weights lack {_short(missing)}")
        with torch.no_grad():
            for mine, theirs in keys.items():
                dst = params.get(mine, buffers.get(mine))
                if dst is None or dst.shape != state[theirs].shape:
                    raise ModelDirError(
                        f"{where}: {theirs} has shape {tuple(state[theirs].shape)}, this model's "
                        f"{mine} {None if dst is None else tuple(dst.shape)}"
                    )
                dst.copy_(state[theirs].to(dst.dtype))
        copied[part] = len(keys)
        log.info("train.init_from: %s (%d tensors) from %s", part, len(keys), path)
    return copied


def from_pretrained(
    name_or_path: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> tuple[AVSRModel, ExperimentConfig]:
    """Load a model directory or a hub repository id (``owner/name``); see :func:`load_model_dir`."""
    return load_model_dir(name_or_path, device=device, revision=revision)


def update_results(path: str | Path, results: dict[str, Any]) -> None:
    """Merge evaluation results into ``results.json`` and refresh the model card.

    Only for local model directories: a hub repository's cached snapshot is left untouched.
    """
    path = Path(path)
    if not (path / CONFIG).is_file():
        log.warning("%s is not a local model directory (a hub repository?): results not merged into it", path)
        return
    prov_file = path / PROVENANCE
    provenance = json.loads(prov_file.read_text()) if prov_file.is_file() else None
    exp = ExperimentConfig.from_dict(json.loads((path / CONFIG).read_text()))
    # a locked read-modify-write, replaced rather than written through (files of a downloaded snapshot
    # may be links into a cache); the card is refreshed under the same lock
    update_json(
        path / RESULTS,
        results,
        then=lambda merged: atomic_write_text(path / CARD, model_card(exp, None, merged, provenance)),
    )


def copy_model_dir(src: str | Path, out: str | Path, revision: str | None = None) -> Path:
    """Copy a model directory or hub repository snapshot (files, not links) to ``out``; the
    evaluation outputs (``eval/``) and hidden files stay behind."""
    root = resolve_model_dir(src, revision)
    load_experiment(root)  # a valid configuration
    if not (root / WEIGHTS).is_file():
        raise ModelDirError(f"{root}: no {WEIGHTS} (an incomplete model directory)")
    ignore = shutil.ignore_patterns("eval", ".*")
    return _write_dir(out, lambda tmp: shutil.copytree(root, tmp, ignore=ignore, dirs_exist_ok=True))


# --------------------------------------------------------------------------------------------------
# export with the LLM LoRA merged


def export_merged(src: str | Path, out: str | Path, revision: str | None = None) -> Path:
    """Merge the LLM LoRA into the base weights: a directory that needs no PEFT at inference.

    The merged LLM (with the resized embeddings and the tokenizer including the added tokens) is
    written as a Hugging Face folder ``<out>/llm`` (``save_pretrained``, safetensors) and the exported
    config points at it (``llm.source: ./llm``, ``llm.lora: null``).  Projectors, encoder LoRA and the
    other trainable weights are kept as they are.  With float32 LLM weights the transcripts are the same;
    with bf16 weights the merged matrix is rounded once more.
    """
    model, exp = load_model_dir(src, revision=revision)
    if exp.model.llm.lora is None:
        raise ModelDirError(f"{src}: the LLM has no LoRA (llm.lora is null): nothing to merge")
    if exp.model.llm.lora.strategy != "shared":
        raise ModelDirError(
            f"{src}: the LLM has {len(exp.model.all_adapters())} LoRA adapters "
            f"({exp.model.llm.lora.strategy} by {exp.model.llm.lora.specific_to}), switched per task / rate: "
            "they cannot be merged into one set of LLM weights"
        )
    trainable = {k: v for k, v in model.trainable_state_dict().items() if not k.startswith("llm.")}
    frozen = {
        k: v for k, v in frozen_state_dict(model).items() if not k.startswith(("llm.", "added_tokens."))
    }
    merged = model.llm.merge_and_unload()
    llm_cfg = dataclasses.replace(exp.model.llm, source=f"{RELATIVE}{LLM_DIR}", tokenizer=None, lora=None)
    new_exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, llm=llm_cfg))
    root = Path(src) if (Path(src) / CONFIG).is_file() else resolve_model_dir(src, revision)
    results = json.loads((root / RESULTS).read_text()) if (root / RESULTS).is_file() else None
    provenance = {
        "notes": [
            f"LLM LoRA merged into the base weights (`llama-avsr export --merge-lora`) from `{src}`; "
            f"the LLM is the Hugging Face folder `{LLM_DIR}/`, no PEFT needed at inference."
            + (" Evaluation results were measured before merging." if results else "")
        ],
        "merged_from": str(src),
    }

    def fill(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps(new_exp.to_dict(), indent=2))
        _save_safetensors(trainable, tmp / WEIGHTS)
        _save_safetensors(frozen, tmp / FROZEN)
        merged.save_pretrained(tmp / LLM_DIR)
        model.tokenizer.save_pretrained(tmp / LLM_DIR)
        if results:
            (tmp / RESULTS).write_text(json.dumps(results, indent=2))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2))
        (tmp / CARD).write_text(model_card(new_exp, None, results, provenance))

    _write_dir(out, fill)
    log.info("merged model written to %s", out)
    return Path(out)


# --------------------------------------------------------------------------------------------------
# sharing


def local_sources(exp: ExperimentConfig) -> list[str]:
    """Weight sources in the config that are local paths outside the directory (not shareable)."""
    m = exp.model
    values = [m.llm.source, m.llm.tokenizer, *(e.source for e in m.encoders.values())]
    return [
        v
        for v in values
        if v is not None
        and not v.startswith(RELATIVE)
        and (Path(v).expanduser().exists() or v.startswith("/"))
    ]


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a model directory to a hub repository (created if needed); returns the commit URL.

    Evaluation outputs under ``eval/`` and hidden files are left out.  Weight sources that are local
    paths outside the directory are reported: others will need the same files to load the model.
    """
    from huggingface_hub import HfApi

    root = Path(model_dir)
    exp = load_experiment(root)  # a complete, valid model directory only
    if not (root / WEIGHTS).is_file():
        raise ModelDirError(f"{root}: no {WEIGHTS} (an incomplete model directory)")
    if not is_repo_id(repo_id):
        raise ModelDirError(f"{repo_id!r} is not a hub repository id (owner/name)")
    for src in local_sources(exp):
        log.warning(
            "%s: weight source %s is a local path; others need the same file to load this model", root, src
        )
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(root),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload llama-avsr model",
        ignore_patterns=PUSH_IGNORE,
    )
    url = getattr(info, "commit_url", None) or str(info)
    log.info("pushed %s to %s (%s)", root, repo_id, url)
    return url


# --------------------------------------------------------------------------------------------------
# model card


def _hub_id(value: str | None) -> str | None:
    return value if value is not None and is_repo_id(value) and not Path(value).exists() else None


def model_card(
    exp: ExperimentConfig,
    model: AVSRModel | None,
    results: dict[str, Any] | None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """README.md of a model directory: hub metadata, how to use it, configuration, evaluation."""
    m = exp.model
    front = ["---", "library_name: llama-avsr", "pipeline_tag: automatic-speech-recognition"]
    base = _hub_id(m.llm.source)
    if base:
        front.append(f"base_model: {base}")
    front += ["tags:", "- llama-avsr", "- audio-visual-speech-recognition", "- lip-reading", "---", ""]
    lines = [
        *front,
        f"# Llama-AVSR model ({'+'.join(m.modalities)})",
        "",
        "Speech recognition with an LLM, made with [llama-avsr](https://github.com/). Use it with",
        "",
        "```bash",
        "llama-avsr transcribe --model <this directory or owner/repo> my_video.mp4",
        "llama-avsr eval --model <this directory or owner/repo> --root <corpus> --csv <labels.csv>",
        "```",
        "",
        "```python",
        "from llama_avsr.model_dir import from_pretrained",
        "model, exp = from_pretrained('<this directory or owner/repo>')",
        "```",
        "",
    ]
    if provenance and provenance.get("notes"):
        lines += ["## Origin", "", *(f"- {n}" for n in provenance["notes"]), ""]
    lines += ["## Configuration", ""]
    lora = m.llm.lora
    lora_text = (
        f"LoRA on {', '.join(lora.targets)}: reduction {lora.reduction}"
        + (f", rank {lora.rank}" if lora.rank is not None else "")
        + f", alpha {lora.alpha:g}, scaling {lora.scaling:g}"
        if lora is not None
        else "no LoRA"
    )
    if lora is not None and lora.strategy != "shared":
        lora_text += f", {lora.strategy} adapters by {lora.specific_to}: {', '.join(m.all_adapters())}"
    lines.append(f"- LLM: `{m.llm.source or m.llm.arch}` ({m.llm.dtype}, {lora_text})")
    for name, s in m.streams.items():
        enc = m.encoders[s.encoder]
        state = "frozen" if enc.frozen else "trained"
        if enc.options.get("lora"):
            state += " + LoRA"
        lines.append(
            f"- stream `{name}`: encoder `{enc.kind}` from `{enc.source or enc.arch}` ({state}) on "
            f"{', '.join(s.inputs)}, {s.compression.kind} ×{'/'.join(map(str, s.compression.rates))}, projector {s.projector.hidden}"
            + (" + LayerNorm" if s.projector.layernorm else "")
        )
    if m.tasks is None:
        lines.append(f'- prompt: "{m.prompt}"')
    else:
        lines += [
            f'- task `{t}`: streams {", ".join(m.task_streams(t))}, prompt "{m.prompt_for(t)}"'
            for t in m.tasks
        ]
    d = exp.decode
    lines.append(f"- decoding: beam search, {d.num_beams} beams, up to {d.max_new_tokens} new tokens")
    if model is not None:
        total, trainable = model.parameter_counts()
        lines.append(f"- parameters: {total:,} total, {trainable:,} trainable")
    lines += ["", "The complete configuration is `config.json`.", ""]
    if results:
        lines += ["## Evaluation", ""]
        rest = dict(results)
        ev = rest.pop("evaluation", None)
        if isinstance(ev, dict) and isinstance(ev.get("by_snr"), dict):
            lines += [
                f"Split `{ev.get('split', '?')}`, label `{ev.get('label', '?')}`.",
                "",
                "| SNR (dB) | WER % | CER % | words |",
                "|---|---|---|---|",
            ]
            for snr, r in ev["by_snr"].items():
                try:
                    lines.append(
                        f"| {snr} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r.get('wer_ref', '')} |"
                    )
                except (KeyError, TypeError):
                    lines.append(f"| {snr} | {r} | | |")
            lines.append("")
        elif isinstance(ev, dict) and isinstance(ev.get("grid"), list):
            lines += [
                "Every task at every compression rate (clean unless noted):",
                "",
                "| task and rates | SNR (dB) | WER % | media tokens / s | prefill GFLOPs / utt |",
                "|---|---|---|---|---|",
            ]
            for g in ev["grid"]:
                for snr, r in g.get("by_snr", {}).items():
                    try:
                        lines.append(
                            f"| {g.get('label', '?')} | {snr} | {100 * r['wer']:.2f} | "
                            f"{r.get('llm_media_tokens_per_second', '')} | {r.get('llm_prefill_gflops_per_utterance', '')} |"
                        )
                    except (KeyError, TypeError):
                        lines.append(f"| {g.get('label', '?')} | {snr} | {r} | | |")
            lines.append("")
        elif ev is not None:
            rest["evaluation"] = ev
        if rest:
            lines += ["```json", json.dumps(rest, indent=2), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
