"""A cache of frozen-encoder outputs, so that features are computed once and reused across epochs.

A frozen encoder in eval mode is a pure function of its input: when the input of an utterance is the
same from one epoch to the next (no random augmentation of that modality), its features are too.
:class:`FeatureCache` stores each utterance's valid frames ``(T_i, D)`` and serves them back, running the
encoder only on the utterances it has not seen.

Keys are content addressed::

    key = blake2b(encoder fingerprint, for each input: name, dtype, shape, bytes of x[i, :len_i])
    encoder fingerprint = sha256(cache format, encoder class + source file, encoder config (kind,
                                 source, arch, dtype, options), every weight and buffer (names, dtypes,
                                 shapes, bytes), device type, autocast state)

so an entry is invalidated by any change of the encoder (config, weights, code) and of the input the
encoder sees — the audio/video file's content, and everything the data pipeline does to it (noise SNR,
normalisation, crop). This subsumes keying on a file's path, size and modification time, and also works
for inputs that have no file (``transcribe`` on raw arrays, benchmarks). The price: the data loader still
decodes and transforms each utterance every epoch (cheap next to an encoder: ~1 ms for a 3 s wav) and the
input is hashed (~0.2 ms for 3 s of audio, ~3 ms for 3 s of 88×88 video).

Storage: in memory (``root=None``), or one safetensors file per utterance under
``<root>/<fingerprint[:16]>/<key[:2]>/<key>.safetensors`` (atomic writes; safe to share between runs and
processes; a changed encoder gets a new folder — delete stale folders by hand). Features are stored in
the dtype the encoder produced (LRS3's 433 h with Whisper-medium in bf16 is ~160 GB: use a disk cache).

Augmentation makes a modality's features different every epoch, hence uncacheable: with
``train.feature_cache`` the training run caches only encoders whose inputs are not augmented — switch a
modality's training augmentation off with ``data.train_augment``, or draw it from K fixed variants per
utterance with ``data.augment_variants`` (K entries per utterance; see :func:`cache_for_training`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

#: bump when the layout or the meaning of a stored entry changes
FORMAT = "llama-avsr-feature-cache/1"
#: ``train.feature_cache`` value for an in-memory cache
MEMORY = "memory"


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw bytes of a tensor (any dtype, bf16 included), copied to the CPU when needed."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)  # 1-d: a 0-d tensor (BatchNorm's num_batches_tracked) has no byte view
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over every parameter and persistent buffer: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _weights_version(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a weight is modified in place (version counter) or replaced (storage)."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((t._version, t.data_ptr()) for t in tensors)


def _source_hash(obj: object) -> str:
    """Hash of the file defining ``obj``'s class (a code change can change features)."""
    try:
        path = inspect.getsourcefile(type(obj))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else ""
    except (OSError, TypeError):
        return ""


class FeatureCache:
    """Content-addressed store of frozen-encoder features (see the module docstring).

    root: folder of per-utterance safetensors files; ``None`` keeps everything in memory.
    encoders: names of the encoders that may be cached (``None``: any frozen encoder in eval mode).
    memory: also keep entries in memory (default: only when there is no ``root``).

    ``hits`` / ``misses`` count utterances; ``encoder_calls`` counts encoder runs.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        encoders: Collection[str] | None = None,
        memory: bool | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.encoders = set(encoders) if encoders is not None else None
        self.memory = self.root is None if memory is None else memory
        self._mem: dict[str, torch.Tensor] = {}
        self._fingerprints: dict[int, tuple[Any, str]] = {}
        self.hits = 0
        self.misses = 0
        self.encoder_calls = 0

    def __repr__(self) -> str:
        where = str(self.root) if self.root is not None else MEMORY
        return f"FeatureCache({where}, encoders={sorted(self.encoders) if self.encoders else 'frozen'})"

    def __len__(self) -> int:
        return len(self._mem)

    # -- what may be cached -------------------------------------------------------------------

    def applies(self, name: str, encoder: nn.Module) -> bool:
        """Cache ``encoder`` only when it is a pure function: frozen (no trainable parameter, LoRA
        included) and in eval mode (no dropout / BatchNorm updates), and selected by name."""
        if self.encoders is not None and name not in self.encoders:
            return False
        return not encoder.training and not any(p.requires_grad for p in encoder.parameters())

    def fingerprint(self, encoder: nn.Module, config: Any = None, device: torch.device | None = None) -> str:
        """The encoder's fingerprint (weights hashed once per process, again after they change)."""
        version = _weights_version(encoder)
        memo = self._fingerprints.get(id(encoder))
        if memo is None or memo[0] != version:
            memo = (version, weights_fingerprint(encoder))
            self._fingerprints[id(encoder)] = memo
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        device_type = (device or torch.device("cpu")).type
        autocast = torch.is_autocast_enabled(device_type)
        desc = {
            "format": FORMAT,
            "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "code": _source_hash(encoder),
            "config": config,
            "weights": memo[1],
            "device": device_type,
            "autocast": str(torch.get_autocast_dtype(device_type)) if autocast else None,
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()

    # -- storage ------------------------------------------------------------------------------

    def _path(self, fp: str, key: str) -> Path:
        assert self.root is not None
        return self.root / fp[:16] / key[:2] / f"{key}.safetensors"

    def _get(self, fp: str, key: str) -> torch.Tensor | None:
        feats = self._mem.get(key)
        if feats is not None or self.root is None:
            return feats
        path = self._path(fp, key)
        if not path.is_file():
            return None
        try:
            feats = load_file(str(path))["features"]
        except Exception as e:  # a damaged entry is recomputed, not fatal
            log.warning("feature cache: unreadable entry %s (%s); recomputing it", path, e)
            return None
        if self.memory:
            self._mem[key] = feats
        return feats

    def _put(self, fp: str, key: str, feats: torch.Tensor, name: str) -> None:
        feats = feats.detach().to("cpu", copy=True).contiguous()
        if self.memory:
            self._mem[key] = feats
        if self.root is None:
            return
        path = self._path(fp, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic (a reader sees a whole entry or none) but not fsynced: a cache entry lost in a crash is
        # recomputed, and an fsync per utterance would slow the disk cache down
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": feats}, str(tmp), metadata={"encoder": name, "fingerprint": fp})
        tmp.replace(path)

    # -- the hook ---------------------------------------------------------------------------------

    def encode(
        self,
        name: str,
        encoder: nn.Module,
        config: Any,
        inputs: Mapping[str, torch.Tensor],
        lengths: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encoder(inputs, lengths)`` through the cache: same outputs on the valid frames.

        inputs: modality → (B, T, …) padded tensors; lengths: modality → (B,) valid lengths.
        Returns features (B, T_max, D) (zero past each length) and lengths (B,). Encoders that do not
        qualify (:meth:`applies`) run directly.
        """
        if not self.applies(name, encoder):
            self.encoder_calls += 1
            return encoder(inputs, lengths)
        first = next(iter(inputs.values()))
        device, b = first.device, first.shape[0]
        fp = self.fingerprint(encoder, config, device)
        keys = [self._key(fp, inputs, lengths, i) for i in range(b)]
        found: list[torch.Tensor | None] = [self._get(fp, k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        self.hits += b - len(todo)
        self.misses += len(todo)
        if todo:
            sub_in, sub_len = _select(inputs, lengths, todo)
            self.encoder_calls += 1
            feats, lens = encoder(sub_in, sub_len)
            for j, i in enumerate(todo):
                found[i] = feats[j, : int(lens[j])]
                self._put(fp, keys[i], found[i], name)
        return _pad([f for f in found if f is not None], device)

    @staticmethod
    def _key(fp: str, inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor], i: int) -> str:
        h = hashlib.blake2b(fp.encode(), digest_size=20)
        for m in sorted(inputs):
            x = inputs[m][i, : int(lengths[m][i])]
            h.update(f"|{m}|{x.dtype}|{tuple(x.shape)}|".encode())
            h.update(_tensor_bytes(x))
        return h.hexdigest()


def _select(
    inputs: Mapping[str, torch.Tensor], lengths: Mapping[str, torch.Tensor], rows: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The sub-batch of ``rows``, cut to its own longest item."""
    if len(rows) == next(iter(lengths.values())).shape[0]:
        return dict(inputs), dict(lengths)
    idx = torch.tensor(rows, device=next(iter(inputs.values())).device)
    sub_len = {m: lengths[m].index_select(0, idx.to(lengths[m].device)) for m in lengths}
    sub_in = {m: inputs[m].index_select(0, idx)[:, : int(sub_len[m].max())] for m in inputs}
    return sub_in, sub_len


def _pad(feats: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, D) → (B, T_max, D) zero-padded on ``device``, lengths (B,)."""
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    out = feats[0].new_zeros((len(feats), int(lens.max()), *feats[0].shape[1:]), device=device)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f.to(device, non_blocking=True)
    return out, lens.to(device)


def cache_for_training(
    model: nn.Module, spec: str, augmented: Collection[str], variants: Mapping[str, int] | None = None
) -> FeatureCache | None:
    """The cache a training run uses (``train.feature_cache``): ``spec`` is ``"memory"`` or a folder.

    Only frozen encoders in eval mode whose stream inputs are all free of fresh training augmentation
    are cached: modalities not in ``augmented`` (``data.train_augment``), or augmented with a fixed number
    of variants per utterance (``variants``, ``data.augment_variants``: their inputs recur, K entries per
    utterance). The others are named in a log message with the setting that would make them cacheable.
    Returns ``None`` when nothing qualifies.
    """
    variants = dict(variants or {})
    augmented = [m for m in augmented if m not in variants]
    cacheable: set[str] = set()
    for stream in model.cfg.streams.values():
        name = stream.encoder
        enc = model.encoders[name]
        frozen = not enc.keep_train_mode and not any(p.requires_grad for p in enc.parameters())
        noisy = sorted(set(stream.inputs) & set(augmented))
        if not frozen:
            log.warning("feature cache: encoder %r trains (or runs in train mode): not cached", name)
        elif noisy:
            log.warning(
                "feature cache: encoder %r reads %s, augmented in training: not cached "
                "(set data.train_augment without %s, or data.augment_variants: {%s: K}, to cache it)",
                name,
                "/".join(noisy),
                "/".join(noisy),
                noisy[0],
            )
        else:
            cacheable.add(name)
    # an encoder shared by an augmented stream is not cached for any stream
    for stream in model.cfg.streams.values():
        if set(stream.inputs) & set(augmented):
            cacheable.discard(stream.encoder)
    if not cacheable:
        log.warning("feature cache: no encoder qualifies; training without it")
        return None
    cache = FeatureCache(None if spec == MEMORY else spec, encoders=cacheable)
    log.info("feature cache for encoder(s) %s: %s", sorted(cacheable), cache)
    for stream in model.cfg.streams.values():
        k = max((variants.get(m, 1) for m in stream.inputs), default=1)
        if stream.encoder in cacheable and k > 1:
            log.info(
                "feature cache: up to %d augmented variants per utterance for encoder %r", k, stream.encoder
            )
    return cache
