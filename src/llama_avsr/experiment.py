"""The experiment config (model, data, training and decoding settings composed): the config layer that
training, inference and tools read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_avsr.config import ConfigError, EncoderConfig, ModelConfig, from_dict, load_recipe, to_dict
from llama_avsr.data.config import DataConfig, check_blank_probabilities
from llama_avsr.decoding.options import DecodingOptions

LOGGERS = ("tensorboard", "csv", "wandb")
#: strategies built here (others are passed to Lightning by name, e.g. ``ddp_find_unused_parameters_true``)
SHARDED_STRATEGIES = (
    "fsdp",
    "deepspeed_stage_2",
    "deepspeed_stage_3",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3_offload",
)
PRECISIONS = ("bf16-mixed", "bf16-true", "32-true", "16-mixed", "auto")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
QUANTIZATION = ("nf4", "int8")
#: how the final model is chosen (``TrainConfig.select``)
SELECT = ("average_last", "last", "best_val_wer")


@dataclass
class TrainConfig:
    """Optimisation and run settings [paper: AdamW β (0.9, 0.98), lr 1e-3 (ASR/AVSR) or 5e-4 (VSR),
    weight decay 0.1, warm-up + cosine per step, 10 epochs, bf16, average of the last epochs].

    out_dir: run directory (checkpoints/, logs/, model/, results); ``runs/<recipe>`` when a recipe
        leaves it unset (``train -o DIR`` sets it).
    epochs: passes over the training data (paper: 10).
    lr / weight_decay / betas: AdamW's learning rate, weight decay and betas (paper: 1e-3 or 5e-4, 0.1,
        [0.9, 0.98]).
    max_steps: stop after this many optimiser steps (-1: run ``epochs``); the schedule spans it.
    max_minutes: wall-clock budget; training stops cleanly when it is spent (the schedule still
        spans ``max_steps``/``epochs``, so set those to what fits).
    warmup_steps / min_lr_ratio: linear warm-up; then cosine from ``lr`` down to ``lr · min_lr_ratio``.
    schedule: ``steps`` — the cosine spans ``max_steps`` (or ``epochs``); ``time`` — it spans the
        ``max_minutes`` budget (progress = training time used / budget), so a time-limited run such
        as the demo always ends at the low learning rate whatever the machine's speed.
    precision: Lightning precision: ``bf16-mixed`` (paper), ``bf16-true``, ``32-true``, ``16-mixed``, or
        ``auto``: ``bf16-mixed`` where the device computes bf16 natively, else ``32-true``.
    strategy / devices / num_nodes / accelerator: Lightning's. ``auto`` (one device), ``ddp``, ``fsdp``
        (shards the LLM per decoder layer, checkpoints sharded), ``deepspeed_stage_2`` / ``_3``
        (+ ``_offload``; needs ``pip install deepspeed`` and CUDA), or any other Lightning strategy name.
        Multi-node: set ``num_nodes`` and launch one process per GPU with SLURM ``srun`` or ``torchrun``
        (docs/scaling.md). The loss is averaged over the transcript tokens of the global batch
        (all ranks × ``accumulate_grad_batches``), so results do not depend on how the work is split.
    accumulate_grad_batches / gradient_clip_val: Lightning's (clipping by norm).
    fsdp_sharding: FSDP sharding strategy: ``FULL_SHARD`` (ZeRO-3-like), ``SHARD_GRAD_OP`` (ZeRO-2-like),
        ``HYBRID_SHARD`` (shard inside a node, replicate across nodes), ``NO_SHARD``.
    fsdp_cpu_offload: FSDP keeps parameter shards (and the optimiser step) on the CPU.
    llm_quantization: ``nf4`` or ``int8``: store the frozen LLM linear weights quantised with
        bitsandbytes (QLoRA-style; CUDA only; ``pip install bitsandbytes``); LoRA and the projectors stay
        in full precision. ``None``: the LLM in ``model.llm.dtype`` (``bfloat16`` for large models).
    select: which weights become the final model: ``average_last`` — the average of the last
        ``average_last`` checkpoints (the paper's recipe; 1 = the last); ``last`` — the last checkpoint;
        ``best_val_wer`` — the weights with the lowest validation WER among the validations of the run
        (``val_every_steps``; the final weights are validated too when the last validation was earlier).
        Needs ``data.val_csv``.
    average_last: how many checkpoints ``select: average_last`` averages.
    checkpoint_every_steps: also checkpoint every N steps (0: only at epoch ends).
    val_every_steps: validate every N optimiser steps (0: at epoch ends; validation needs ``data.val_csv``).
    val_wer: also decode the validation split (greedy unless ``val_beams``) at each validation and log
        ``val/wer`` beside ``val/loss`` (a multi-task / multi-rate model: its fullest task at its default
        rates; ``val/loss`` averages every task at every rate). ``None``: on, except under sharded strategies (FSDP/DeepSpeed
        generation would need every rank to decode in lock step).
    val_beams: beams of that decoding (1 = greedy; ``decode.max_new_tokens`` applies).
    log_every_steps: log the loss and learning rate every N optimiser steps.
    loggers: any of tensorboard, csv, wandb (``WANDB_MODE=offline`` works without a network).
    seed: seeds model initialisation and Lightning's generators.
    eval_at_end: after training, evaluate the final model on ``data.test_csv`` (table printed, results
        beside the model).
    feature_cache: ``memory`` or a folder: compute the features of frozen encoders once and reuse them
        in later epochs (only for modalities left out of ``data.train_augment`` or augmented in
        ``data.augment_variants`` fixed variants; see ``models/feature_cache.py``). ``None``: encode every
        step.
    ctc_warmup_epochs: before the LLM trains, fit the projectors of frozen-encoder streams for this
        many epochs with a CTC loss against the LLM's own embeddings of the transcript tokens
        (``training/warmup.py``; seconds on a CPU). 0 (the paper): the projectors start random.
    ctc_warmup_lr / ctc_warmup_batch_size: its AdamW learning rate (linear decay to 0) and batch size.
    encoder_warmup_batch_size: utterances per batch in the encoder-rate warm-up of a trainable encoder
        (``ctc_warmup_rate: encoder``); the frame budget ``data.max_frames`` grows by the same factor over
        ``data.max_batch_size`` (with no ``max_batch_size``, the budget stays and batches are capped at
        this many); ``None``: the training batches. Larger batches pass more utterances a second through a CPU, but an epoch has
        fewer optimiser steps: at 16 instead of 4, with the same epochs and learning rate, the demo's lip
        encoder learnt far less (docs/results.md, issue 14, sixth round).
    ctc_warmup_streams: the streams to warm up (default: every stream whose encoder is frozen), or a
        mapping stream → epochs. A stream whose encoder trains (e.g. AV-HuBERT from scratch) is warmed
        up only when named here: its encoder then learns with the projector (much costlier per epoch).
    ctc_warmup_rate: where a trainable encoder's CTC loss is taken. ``stream``: on the projector's
        outputs, after compression (encoder, compressor and projector learn together). ``encoder``: on a
        temporary linear head at the encoder's own frame rate (25 Hz for video: ~8 frames per transcript
        token instead of ~1.6 after a stack of 5, so CTC can align from scratch), after which the
        projector is fitted on the encoder's features as for a frozen stream, for ``ctc_warmup_epochs``.
    warmup_teachers: cross-modal distillation in that encoder-rate warm-up: a mapping student stream →
        teacher stream (``{video: audio}``). Besides CTC, the student's trainable encoder learns to predict,
        through a second temporary linear head, the teacher's frozen encoder features at the same instants
        (each dimension standardised; mean squared error): the audio-derived frame targets that
        AV-HuBERT's pre-training starts from. It gives every video frame a target, where CTC from scratch
        first spends hundreds of steps predicting blanks (``training/warmup.py``). ``None``: CTC alone.
    warmup_teacher_weight: the weight of that loss beside the CTC loss.
    warmup_token_teachers: a mapping student stream → teacher stream (``{video: audio}``) for the step
        after that encoder-rate warm-up, where the student's projector is fitted on its encoder's
        features: besides CTC, each student token learns to point where the teacher stream's warmed-up
        projector puts its token for the same instant (cosine distance; the teacher's token sequence is
        resampled to the student's token rate). The LLM then meets video tokens that read like the audio
        tokens it learns from, instead of tokens it must learn to read from the few utterances whose
        audio is dropped; a CTC loss at a token rate near the transcript's (stack 5: ~1.6 tokens per
        transcript token) gives the projector almost no signal. The teacher's encoder must be frozen.
        On the demo it gave no gain while the lip encoder reads little (docs/results.md, issue 14).
    warmup_token_teacher_weight: the weight of that loss beside the projector's CTC loss.
    warmup_aligners: a mapping student stream → teacher stream (``{video: audio}``) for the encoder-rate
        warm-up: the training transcripts are force-aligned on the teacher's frozen encoder features
        (a linear CTC head fitted in seconds, then Viterbi), and the student's encoder learns, through a
        temporary linear head, the class of the token spoken at each of its frames (cross-entropy, 0
        between words), besides CTC; its projector then learns the class of each of its tokens the same
        way, in the cosine logits against the LLM's embeddings. Forced alignment is what gives hybrid
        ASR systems their frame targets; here it gives every video frame a target from the first step
        (``training/warmup.py``). ``None``: off.
        The teacher may also be one of ``aligner_encoders``: a model without an audio stream (VSR) then
        gets its frame targets from an audio encoder that serves the alignment alone.
    warmup_aligner_weight: the weight of those cross-entropies beside the CTC losses.
    aligner_encoders: encoders (name → encoder config, as under ``model.encoders``) built only to align
        the training transcripts for ``warmup_aligners`` and discarded after it: a VSR model learns its
        lip encoder from the audio's alignment (the soundtrack of the training videos), as hybrid systems
        take their frame targets from an acoustic model, and the model directory holds no audio encoder.
        The encoder reads the modalities it accepts (Whisper: the audio); it must be frozen.
    blank_first_steps: a curriculum for a model with several modalities: a mapping modality → N blanks
        that modality's input, during the first N optimiser steps, in every training utterance whose
        other inputs are present (``{audio: 100}``: the LLM first learns to read the warmed-up video
        tokens alone, then the audio, which it reads far more easily, is added; ``data.modality_dropout``
        applies throughout). One modality at most; ``None``: off.
    blank_batches: modality → probability that a training step blanks that modality in every utterance
        of its batch whose other inputs are present (one modality per step at most; drawn from the seed and
        the step, so every process of a run draws alike). Where ``data.modality_dropout`` mixes a few
        utterances without audio into batches the LLM mostly reads through the audio, a whole batch
        without it makes the step about the video alone. As with ``blank_first_steps``, the streams
        reading a blanked modality are not updated in that step.
    init_from: start parts of the model from trained model directories (or hub ids) instead of their
        initialisation: a mapping part → directory, where a part is a stream name (its projector and,
        when it trains, its encoder) or ``llm`` (the LoRA weights): ``{video: runs/vsr/model, audio:
        runs/asr/model}`` starts an AVSR model from a VSR and an ASR model, as audio-visual systems start
        from encoders trained on one modality. Each part must be configured as in its source (a one-line
        error names the difference). An initialised stream is not warmed up: the CTC warm-up and its
        teachers and aligners skip it (with a warning when ``ctc_warmup_streams`` names it), so a recipe
        with warm-ups (``demo/avsr``) starts from a VSR model with ``init_from`` alone. A resumed run takes
        its weights from its checkpoint.
    task_sampling: for a multi-task model (``model.tasks``): ``batch`` — one task per batch;
        ``utterance`` — one per utterance; ``all`` — every task on every utterance (Omni-AVSR), weighted
        by ``task_weights`` (``training/objective.py``).
    task_weights: relative weight (probability when drawn) of each task; default equal.
    rate_sampling: for streams with several compression ``ratios``: ``all`` — the loss at every rate
        combination each step (Llama-MTSK); ``sample`` — one combination drawn per step (cheaper).
    """

    out_dir: str = "runs/exp"
    epochs: int = 10
    max_steps: int = -1
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0
    schedule: str = "steps"
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    select: str = "average_last"
    average_last: int = 1
    checkpoint_every_steps: int = 0
    val_every_steps: int = 0
    val_wer: bool | None = None
    val_beams: int = 1
    log_every_steps: int = 10
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    seed: int = 42
    eval_at_end: bool = True
    feature_cache: str | None = None
    fsdp_sharding: str = "FULL_SHARD"
    fsdp_cpu_offload: bool = False
    llm_quantization: str | None = None
    ctc_warmup_epochs: float = 0.0
    ctc_warmup_lr: float = 2e-3
    ctc_warmup_batch_size: int = 16
    encoder_warmup_batch_size: int | None = None
    ctc_warmup_streams: list[str] | dict[str, float] | None = None
    ctc_warmup_rate: str = "stream"
    warmup_teachers: dict[str, str] | None = None
    warmup_teacher_weight: float = 1.0
    warmup_token_teachers: dict[str, str] | None = None
    warmup_token_teacher_weight: float = 1.0
    warmup_aligners: dict[str, str] | None = None
    warmup_aligner_weight: float = 1.0
    aligner_encoders: dict[str, EncoderConfig] | None = None
    blank_first_steps: dict[str, int] | None = None
    blank_batches: dict[str, float] | None = None
    init_from: dict[str, str] | None = None
    task_sampling: str = "batch"
    task_weights: dict[str, float] | None = None
    rate_sampling: str = "all"

    def __post_init__(self) -> None:
        if self.task_sampling not in ("batch", "utterance", "all"):
            raise ValueError(
                f"train.task_sampling must be 'batch', 'utterance' or 'all', got {self.task_sampling!r}"
            )
        if self.rate_sampling not in ("all", "sample"):
            raise ValueError(f"train.rate_sampling must be 'all' or 'sample', got {self.rate_sampling!r}")
        if self.task_weights is not None and any(v < 0 for v in self.task_weights.values()):
            raise ValueError("train.task_weights must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"train.max_steps={self.max_steps} trains nothing: give a positive number of optimiser "
                "steps, or -1 to train for train.epochs"
            )
        if self.max_steps == -1 and self.epochs < 1:
            raise ValueError(
                f"train.epochs={self.epochs} trains nothing: give at least 1 (or train.max_steps)"
            )
        bad = set(self.loggers) - set(LOGGERS)
        if bad:
            raise ValueError(f"train.loggers: unknown {sorted(bad)}; choose from {LOGGERS}")
        if self.average_last < 1:
            raise ValueError("train.average_last must be >= 1")
        if self.select not in SELECT:
            raise ValueError(f"train.select must be one of {SELECT}, got {self.select!r}")
        if self.val_beams < 1:
            raise ValueError("train.val_beams must be >= 1")
        if self.sharded and (self.val_wer or self.select == "best_val_wer"):
            raise ValueError(
                f"train.val_wer / train.select=best_val_wer do not work with train.strategy={self.strategy}: "
                "validate the saved checkpoints with `llama-avsr eval --split val` instead"
            )
        if len(self.betas) != 2:
            raise ValueError("train.betas needs two values")
        if self.schedule not in ("steps", "time"):
            raise ValueError(f"train.schedule must be 'steps' or 'time', got {self.schedule!r}")
        if self.schedule == "time" and not self.max_minutes:
            raise ValueError("train.schedule=time needs train.max_minutes (the budget the cosine spans)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.accumulate_grad_batches < 1:
            raise ValueError("train.accumulate_grad_batches must be >= 1")
        if self.fsdp_sharding not in FSDP_SHARDING:
            raise ValueError(
                f"train.fsdp_sharding must be one of {FSDP_SHARDING}, got {self.fsdp_sharding!r}"
            )
        if self.strategy.startswith(("fsdp", "deepspeed")) and self.strategy not in SHARDED_STRATEGIES:
            raise ValueError(
                f"train.strategy={self.strategy}: use one of {SHARDED_STRATEGIES} "
                "(FSDP options are train.fsdp_sharding and train.fsdp_cpu_offload)"
            )
        if self.llm_quantization is not None:
            if self.llm_quantization not in QUANTIZATION:
                raise ValueError(
                    f"train.llm_quantization must be one of {QUANTIZATION} or null, got {self.llm_quantization!r}"
                )
            if self.strategy.startswith(("fsdp", "deepspeed")):
                raise ValueError(
                    "train.llm_quantization works with one GPU or ddp, not with sharded strategies "
                    f"({self.strategy}): shard the bf16 LLM instead, or quantise on each GPU with ddp"
                )
        if self.encoder_warmup_batch_size is not None and self.encoder_warmup_batch_size < 1:
            raise ValueError("train.encoder_warmup_batch_size must be >= 1 or null")
        if self.ctc_warmup_epochs < 0 or self.ctc_warmup_batch_size < 1:
            raise ValueError("train.ctc_warmup_epochs must be >= 0 and train.ctc_warmup_batch_size >= 1")
        if isinstance(self.ctc_warmup_streams, dict) and any(
            not isinstance(v, (int, float)) or v < 0 for v in self.ctc_warmup_streams.values()
        ):
            raise ValueError("train.ctc_warmup_streams: a mapping needs epochs >= 0 for every stream")
        if self.ctc_warmup_rate not in ("stream", "encoder"):
            raise ValueError(
                f"train.ctc_warmup_rate must be 'stream' or 'encoder', got {self.ctc_warmup_rate!r}"
            )
        if self.encoder_warmup_batch_size is not None and self.ctc_warmup_rate != "encoder":
            raise ValueError("train.encoder_warmup_batch_size needs train.ctc_warmup_rate: encoder")
        if self.warmup_teachers and self.ctc_warmup_rate != "encoder":
            raise ValueError("train.warmup_teachers needs train.ctc_warmup_rate: encoder")
        if self.warmup_teacher_weight < 0:
            raise ValueError("train.warmup_teacher_weight must be >= 0")
        if self.warmup_token_teachers and self.ctc_warmup_rate != "encoder":
            raise ValueError("train.warmup_token_teachers needs train.ctc_warmup_rate: encoder")
        if self.warmup_token_teacher_weight < 0:
            raise ValueError("train.warmup_token_teacher_weight must be >= 0")
        if self.warmup_aligners and self.ctc_warmup_rate != "encoder":
            raise ValueError("train.warmup_aligners needs train.ctc_warmup_rate: encoder")
        if self.warmup_aligner_weight < 0:
            raise ValueError("train.warmup_aligner_weight must be >= 0")
        if self.blank_first_steps:
            if len(self.blank_first_steps) > 1:
                raise ValueError(
                    f"train.blank_first_steps: one modality at most (blanking several leaves nothing to "
                    f"read), got {self.blank_first_steps}"
                )
            if any(not isinstance(n, int) or n < 0 for n in self.blank_first_steps.values()):
                raise ValueError(
                    f"train.blank_first_steps: steps must be integers >= 0, got {self.blank_first_steps}"
                )
        if self.blank_batches:
            check_blank_probabilities("train.blank_batches", self.blank_batches)
        if self.feature_cache and self.sharded:
            raise ValueError(
                f"train.feature_cache does not work with train.strategy={self.strategy}: a sharded encoder "
                "must run on every rank at once, a cache hit on one rank and a miss on another would hang"
            )

    @property
    def ctc_warmup(self) -> bool:
        """Whether any stream is warmed up before the first LLM step."""
        if isinstance(self.ctc_warmup_streams, dict):
            return any(v > 0 for v in self.ctc_warmup_streams.values())
        return self.ctc_warmup_epochs > 0

    @property
    def validation_wer(self) -> bool:
        """Whether validation decodes and scores the split (``val_wer``, resolved)."""
        return (not self.sharded) if self.val_wer is None else self.val_wer

    @property
    def sharded(self) -> bool:
        """Whether parameters (and checkpoints) are sharded over the ranks (FSDP, DeepSpeed)."""
        return self.strategy in SHARDED_STRATEGIES


@dataclass
class ExperimentConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodingOptions = field(default_factory=DecodingOptions)

    def __post_init__(self) -> None:
        m, t = self.model, self.train
        if t.task_weights is not None:
            bad = set(t.task_weights) - set(m.task_names)
            if bad or not any(t.task_weights.get(k, 1.0) > 0 for k in m.task_names):
                raise ValueError(
                    f"train.task_weights: {sorted(bad) or 'all zero'}; the model's tasks are {m.task_names}"
                )
        aligners = t.aligner_encoders or {}
        clash = set(aligners) & set(m.streams) if aligners else set()
        if clash:
            raise ValueError(
                f"train.aligner_encoders: {sorted(clash)} also name streams of the model: rename them"
            )
        unused = set(aligners) - set((t.warmup_aligners or {}).values())
        if unused:
            raise ValueError(
                f"train.aligner_encoders: {sorted(unused)} are not the teacher of any train.warmup_aligners"
            )
        for name, enc in aligners.items():
            if not enc.frozen:
                raise ValueError(f"train.aligner_encoders.{name}: an alignment encoder must be frozen")
        parts = set(t.init_from or {})
        unknown = parts - {*m.streams, "llm"} if parts else set()
        if unknown:
            raise ValueError(
                f"train.init_from: {sorted(unknown)} are not parts of the model (its streams "
                f"{sorted(m.streams)}, or llm)"
            )
        if "llm" in parts and m.llm.lora is None:
            raise ValueError(
                "train.init_from.llm: the LLM has no LoRA weights to start from (model.llm.lora)"
            )
        for key in ("blank_first_steps", "blank_batches"):
            chosen = getattr(t, key) or {}
            bad = set(chosen) - set(m.modalities) if chosen else set()
            if chosen and (bad or len(m.modalities) < 2):
                raise ValueError(
                    f"train.{key}: {sorted(bad) or sorted(chosen)} is not one of several modalities; the "
                    f"model reads {m.modalities}"
                )
        if self.train.select == "best_val_wer":
            if self.data.val_csv is None:
                raise ValueError("train.select=best_val_wer needs a validation split: set data.val_csv")
            if not self.train.validation_wer:
                raise ValueError("train.select=best_val_wer needs train.val_wer (it is off)")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        """Read an experiment config (a YAML path or a packaged recipe name such as ``paper/asr``) and
        apply ``key.path=value`` overrides; ``train.out_dir`` defaults to ``runs/<recipe>``."""
        return cls.from_dict(load_recipe(path, overrides))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Build from a nested dict; any invalid value is a one-line :class:`ConfigError`."""
        if "model" not in data:
            raise ConfigError("an experiment config needs a `model:` section")
        try:
            return from_dict(cls, data)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(" ".join(str(e).split())) from e

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
