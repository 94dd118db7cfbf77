"""Scaling out: Lightning strategies (DDP, FSDP, DeepSpeed), checkpoints that hold only the trainable
weights (sharded with FSDP / DeepSpeed) and their consolidation on one process.

What each strategy does here (docs/scaling.md has the launch recipes and a memory table):

- ``ddp``: every rank holds the whole model; gradients of the trainable weights are averaged.
- ``fsdp``: every LLM decoder layer, every encoder, every projector and every LoRA adapter is its own
  FSDP unit, so each unit holds one dtype (frozen bf16 LLM weights and fp32 adapters are never
  flattened together) and frozen weights are sharded without gradients. Checkpoints are sharded
  (``torch.distributed.checkpoint``: one file per rank) and contain the trainable weights and their
  optimiser state only; :func:`read_trainable_state` consolidates them on one process, at any world
  size. Activation checkpointing of the LLM blocks is ``model.llm.gradient_checkpointing: true``
  (works with every strategy).
- ``deepspeed_stage_2`` / ``deepspeed_stage_3``: ZeRO through Lightning's DeepSpeed strategy (an optional
  dependency, imported only when chosen), saving without the frozen parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from llama_avsr import safe_load
from llama_avsr.models.avsr import AVSRModel
from llama_avsr.models.llm import base_causal_lm
from llama_avsr.training.config import TrainConfig

log = logging.getLogger(__name__)

#: the file Lightning writes beside the shards of an FSDP checkpoint (loop state, sampler position …)
FSDP_METADATA = "meta.pt"
#: the tag Lightning's DeepSpeed strategy saves under
DEEPSPEED_TAG = "checkpoint"
#: prefixes wrappers insert into parameter names
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_forward_module.")


def clean_name(name: str) -> str:
    """A parameter name without the prefixes FSDP / activation checkpointing / DeepSpeed insert."""
    for p in WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


_rank: int | None = None  # this process's rank in the last training run (set_rank)


def set_rank(rank: int) -> None:
    """Remember this process's rank in a finished training run (for :func:`is_global_zero`)."""
    global _rank
    _rank = rank


def global_rank() -> int:
    """This process's rank: from the last training run or the process group when there is one, else
    from the launcher's environment (torchrun ``RANK``, SLURM ``SLURM_PROCID``, Lightning's
    ``NODE_RANK``/``LOCAL_RANK``)."""
    if _rank is not None:
        return _rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for var in ("RANK", "SLURM_PROCID", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0)) * int(
        os.environ.get("LOCAL_WORLD_SIZE", 1)
    )


def is_global_zero() -> bool:
    """Whether this process is rank 0 (the one that writes results), also after ``train()`` returned."""
    return global_rank() == 0


# --------------------------------------------------------------------------------------------------
# strategies


def require_deepspeed(strategy: str) -> None:
    """Clear errors for a DeepSpeed strategy without DeepSpeed or without CUDA."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"train.strategy={strategy} needs DeepSpeed, an optional dependency: pip install deepspeed "
            "(or choose train.strategy=fsdp, which shards the same way without it)"
        ) from e
    if not torch.cuda.is_available():
        raise RuntimeError(f"train.strategy={strategy}: DeepSpeed trains on CUDA GPUs only; use ddp or fsdp")


def fsdp_units(model: AVSRModel) -> set[nn.Module]:
    """Modules that become FSDP units: LLM decoder layers, encoders, projectors, and every maximal
    subtree whose parameters all train with one dtype (LoRA adapters).

    Inside a unit FSDP flattens the parameters into one tensor, which needs one dtype; separate units
    for the trainable parts also keep gradients off the frozen weights. Containers without a forward
    (``ModuleDict``, ``ModuleList``) are never units: their children are called directly.
    """
    units: set[nn.Module] = set()
    base = base_causal_lm(model.llm)
    layer_names = set(getattr(base, "_no_split_modules", None) or [])
    units.update(m for m in model.llm.modules() if type(m).__name__ in layer_names)
    units.update(model.encoders.values())
    for proj in model.projectors.values():  # a Matryoshka stream holds one projector per rate
        units.update(proj.values() if isinstance(proj, nn.ModuleDict) else [proj])

    def visit(m: nn.Module) -> None:
        params = list(m.parameters())
        if not params:
            return
        containers = (nn.ModuleDict, nn.ModuleList)
        if (
            not isinstance(m, containers)
            and all(p.requires_grad for p in params)
            and len({p.dtype for p in params}) == 1
        ):
            units.add(m)
            return
        for child in m.children():
            visit(child)

    visit(model)
    units.discard(model)
    return units


def fsdp_policy(units: Iterable[nn.Module]):
    """An FSDP ``auto_wrap_policy`` wrapping exactly ``units``."""
    ids = {id(m) for m in units}

    def policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else id(module) in ids

    return policy


def build_strategy(t: TrainConfig, model: AVSRModel, precision: str) -> Any:
    """The Lightning strategy for ``train.strategy`` (a name string for the ones Lightning builds)."""
    name = t.strategy
    if name == "ddp" and (model.cfg.multi_task or model.cfg.multi_rate):
        # a step trains the projectors and adapters of the tasks and rates it drew (training/objective.py):
        # the others get no gradient, which plain DDP takes for a bug
        log.info("train.strategy=ddp with several tasks / rates: ddp_find_unused_parameters_true")
        return "ddp_find_unused_parameters_true"
    if name == "fsdp" and t.devices == 1 and t.num_nodes == 1:
        # nothing to shard; FSDP's single-process mode also breaks on tied embeddings (torch 2.x)
        log.info("train.strategy=fsdp on one process: training without FSDP (checkpoints as files)")
        return "auto"
    if name == "fsdp":
        from torch.distributed.fsdp import MixedPrecision

        if precision == "bf16-mixed":
            # compute in bf16 (frozen bf16 weights are not up-cast), reduce gradients in fp32
            mp = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        elif precision == "16-mixed":
            mp = MixedPrecision(param_dtype=torch.float16, reduce_dtype=torch.float32)
        elif precision == "32-true":
            mp = MixedPrecision()  # every unit keeps its own dtype, as without FSDP
        else:
            mp = None  # *-true: Lightning casts the whole model
        return TrainableFSDPStrategy(
            trainable_keys=trainable_keys(model),
            precision=precision,
            auto_wrap_policy=fsdp_policy(fsdp_units(model)),
            sharding_strategy=t.fsdp_sharding,
            cpu_offload=t.fsdp_cpu_offload,
            mixed_precision=mp,
            state_dict_type="sharded",
            use_orig_params=True,
            # HYBRID_SHARD: shard inside a node (NVLink), replicate across nodes
            device_mesh=(t.num_nodes, _devices_per_node(t)) if t.fsdp_sharding == "HYBRID_SHARD" else None,
        )
    if name.startswith("deepspeed"):
        require_deepspeed(name)
        from lightning.pytorch.strategies import DeepSpeedStrategy

        parts = name.removeprefix("deepspeed_stage_").split("_")
        offload = "offload" in parts
        return DeepSpeedStrategy(
            stage=int(parts[0]),
            offload_optimizer=offload,
            offload_parameters=offload and parts[0] == "3",
            exclude_frozen_parameters=True,
        )
    return name


def _devices_per_node(t: TrainConfig) -> int:
    if isinstance(t.devices, int) and t.devices > 0:
        return t.devices
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    raise ValueError("train.fsdp_sharding=HYBRID_SHARD needs train.devices (GPUs per node) as a number")


def trainable_keys(model: AVSRModel) -> frozenset[str]:
    """Checkpoint keys (LightningModule state-dict names) of the trainable state."""
    return frozenset(f"model.{k}" for k in model.trainable_state_dict())


class ShardedClipPrecision(FSDPPrecision):
    """Lightning's FSDP precision plugin that clips gradients by norm (``train.gradient_clip_val``).

    Lightning's refuses: the norm must be taken over the gradient shards of every rank, by the root FSDP
    module's ``clip_grad_norm_``, and the plugin has no reference to it; this one asks the strategy.
    """

    def __init__(self, precision: str, strategy: FSDPStrategy) -> None:
        super().__init__(precision)  # type: ignore[arg-type]
        self._strategy = strategy

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        self._strategy.model.clip_grad_norm_(clip_val)


class TrainableFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP whose checkpoints hold only the trainable weights (the frozen ones come from
    their sources), saved sharded and loadable at any world size.

    trainable_keys: LightningModule state-dict names of the trainable state (:func:`trainable_keys`).
    precision: the Trainer's precision (the strategy brings its own precision plugin, which clips
        gradients by norm: :class:`ShardedClipPrecision`).
    kwargs: :class:`lightning.pytorch.strategies.FSDPStrategy`'s.
    """

    def __init__(self, trainable_keys: frozenset[str], precision: str = "32-true", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trainable_keys = trainable_keys
        self.precision_plugin = ShardedClipPrecision(precision, self)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        # on the CPU (gloo; tests) FSDP must be told the device: Lightning passes its index, None
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = super().lightning_module_state_dict()
        return {k: v for k, v in state.items() if k in self.trainable_keys}

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from lightning.fabric.strategies.fsdp import (
            _distributed_checkpoint_load,
            _get_sharded_state_dict_context,
        )
        from lightning.pytorch.trainer.states import TrainerFn
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        path = Path(self.broadcast(checkpoint_path))
        if not (path / FSDP_METADATA).is_file():  # a single-file checkpoint (e.g. written by ddp)
            return self._load_file_checkpoint(path)
        assert self.model is not None and self.lightning_module is not None
        with _get_sharded_state_dict_context(self.model):
            own = self.model.state_dict()
            # Lightning's loader asks for every weight; the checkpoint has the trainable ones only
            module_state = {"model": {k: v for k, v in own.items() if k in self.trainable_keys}}
            _distributed_checkpoint_load(module_state, path)
            own.update(module_state["model"])
            self.model.load_state_dict(own)
            if self.lightning_module.trainer.state.fn == TrainerFn.FITTING and self.optimizers:
                reader = FileSystemReader(path=path)
                for idx, optim in enumerate(self.optimizers):
                    key = f"optimizer_{idx}"
                    optim_state = load_sharded_optimizer_state_dict(
                        model_state_dict=module_state["model"], optimizer_key=key, storage_reader=reader
                    )
                    flat = FSDP.optim_state_dict_to_load(
                        optim_state_dict=optim_state[key], model=self.model, optim=optim
                    )
                    optim.load_state_dict(flat)
        return safe_load.load(path / FSDP_METADATA, mmap=False)  # weights only, whatever Lightning passes

    def _load_file_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint written without FSDP (ddp, one device): Lightning's own loader would number the
        optimiser's parameters over *all* model parameters, frozen ones included."""
        from lightning.pytorch.trainer.states import TrainerFn
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        assert self.model is not None and self.lightning_module is not None
        checkpoint = safe_load.load(path, mmap=False)
        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        with FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(rank0_only=False),
            FullOptimStateDictConfig(rank0_only=False),
        ):
            self.model.load_state_dict(checkpoint.pop("state_dict"), strict=False)
            names = self.lightning_module.optimizer_param_names()
            for optim, state in zip(self.optimizers, checkpoint.get("optimizer_states") or [], strict=False):
                if fitting:
                    flat = FSDP.optim_state_dict_to_load(
                        optim_state_dict=optimizer_state_by_name(state, names), model=self.model, optim=optim
                    )
                    optim.load_state_dict(flat)
        return checkpoint


# --------------------------------------------------------------------------------------------------
# reading checkpoints on one process


def is_sharded_checkpoint(path: Path) -> bool:
    """A checkpoint directory (FSDP shards or DeepSpeed ZeRO) rather than a single file."""
    return path.is_dir()


def read_trainable_state(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The (LightningModule-named) weights of a checkpoint as full tensors on the CPU, on one process.

    path: a Lightning ``.ckpt`` file, an FSDP sharded checkpoint directory (read with
        ``torch.distributed.checkpoint`` without a process group, whatever the world size that wrote
        it) or a DeepSpeed checkpoint directory (consolidated with DeepSpeed's ``zero_to_fp32``).
    keys: keep only these names (e.g. :func:`trainable_keys`); ``None`` keeps everything.
    """
    path = Path(path)
    if (path / FSDP_METADATA).is_file():
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        # what torch's own dcp_to_torch_save does, for the weights only (not the optimiser state)
        loaded: dict[str, Any] = {}
        _load_state_dict(
            loaded,
            storage_reader=FileSystemReader(str(path)),
            planner=_EmptyStateDictLoadPlanner(keys={"model"}),
            no_dist=True,
        )
        state = loaded["model"]
    elif path.is_dir():
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError as e:
            raise RuntimeError(
                f"{path}: a DeepSpeed checkpoint; reading it needs pip install deepspeed"
            ) from e
        state = get_fp32_state_dict_from_zero_checkpoint(
            str(path), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True
        )
    else:
        state = safe_load.load(path)["state_dict"]
    state = {clean_name(k): v for k, v in state.items()}
    if keys is not None:
        keep = set(keys)
        state = {k: v for k, v in state.items() if k in keep}
    return state


def optimizer_state_by_name(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """A plain optimiser state dict (parameters numbered over the groups in order) keyed by parameter
    names instead, FSDP's full format. names: per group, as ``AVSRLightning.optimizer_param_names``."""
    if not state["state"] or isinstance(next(iter(state["state"])), str):
        return state
    flat = [n for group in names for n in group]
    groups = [{**g, "params": [flat[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {flat[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """FSDP's name-keyed optimiser state dict → a plain one (parameters numbered over the groups)."""
    index: dict[str, int] = {}
    groups = []
    for g in state["param_groups"]:
        groups.append({**g, "params": [index.setdefault(n, len(index)) for n in g["params"]]})
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def consolidate_checkpoint(path: str | Path) -> dict[str, Any]:
    """An FSDP sharded checkpoint directory as one Lightning checkpoint dict (weights, optimiser states
    numbered as a plain optimiser numbers them, loop state, sampler position), read on one process:
    to resume a sharded run without FSDP (one process, or ddp)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    loaded: dict[str, Any] = {}
    _load_state_dict(
        loaded, storage_reader=FileSystemReader(str(path)), planner=_EmptyStateDictLoadPlanner(), no_dist=True
    )
    checkpoint = safe_load.load(path / FSDP_METADATA, mmap=False)
    checkpoint["state_dict"] = {clean_name(k): v for k, v in loaded["model"].items()}
    optimizers = sorted((k for k in loaded if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    checkpoint["optimizer_states"] = [optimizer_state_by_index(loaded[k]) for k in optimizers]
    return checkpoint
