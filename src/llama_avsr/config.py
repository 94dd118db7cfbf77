"""Typed configuration: one small dataclass per component, composed into a model / experiment config.

Configs load from YAML (``ExperimentConfig.from_yaml``) and accept dotted command-line overrides
(``train.lr=5e-4``).  Everything that depends on the loaded models (hidden sizes, special-token ids)
is read from the models at build time, never from tables keyed by model names.

Why this loader and not OmegaConf or jsonargparse (both tried on these dataclasses): OmegaConf's
structured configs would replace only the few lines of ``from_dict`` / ``apply_overrides``, read no
docstrings (``llama-avsr config keys`` takes its help from them), know no packaged recipes and report
errors in four lines; jsonargparse (LightningCLI's) turns every key into an option (``--cfg.train.lr``
instead of the ``key.path=value`` overrides every command, the docs and the SLURM example use), wants
``model.encoders`` / ``model.streams`` on the command line before a recipe is read, and takes help from
Google / reST docstring sections. Both would add a second type system beside the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: prompts of the paper, by the set of modalities the LLM sees
PROMPTS: dict[frozenset[str], str] = {
    frozenset({"audio"}): "Transcribe speech to text.",
    frozenset({"video"}): "Transcribe video to text.",
    frozenset({"audio", "video"}): "Transcribe speech and video to text.",
}

#: tokens added to every tokenizer (the modality delimiters of the published code's prompt)
SPECIAL_TOKENS: tuple[str, ...] = ("<audio>", "</audio>", "<video>", "</video>")
PAD_TOKEN = "<pad>"

MODALITIES: tuple[str, ...] = ("audio", "video")

#: recognition tasks by the modalities the LLM sees (one multi-task model serves several, ``model.tasks``)
TASKS: dict[str, tuple[str, ...]] = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}

#: what a task-, rate- or task-and-rate-specific LoRA adapter is keyed on (``LoRAConfig.specific_to``)
LORA_STRATEGIES: tuple[str, ...] = ("shared", "specific", "shared+specific")
LORA_SPECIFIC_TO: tuple[str, ...] = ("task", "rates", "task+rates")
#: PEFT's name of the one adapter of a shared-LoRA model (kept so older model directories load)
SHARED_ADAPTER = "default"


def task_of(modalities: typing.Iterable[str]) -> str:
    """The task that reads exactly these modalities (``{"audio"}`` → ``asr``)."""
    mods = set(modalities)
    for name, needs in TASKS.items():
        if set(needs) == mods:
            return name
    raise ValueError(f"no task reads exactly {sorted(mods)}")


def rates_key(rates: dict[str, int]) -> str:
    """A rate combination as a name: ``{"audio": 4, "video": 2}`` → ``audio4_video2`` (stream order)."""
    return "_".join(f"{s}{k}" for s, k in rates.items())


#: packaged configs: recipes by name (``paper/asr``, ``demo/avsr``) and architectures (``arch/``)
CONFIG_DIR = Path(__file__).parent / "configs"
RECIPE_GROUPS: tuple[str, ...] = ("paper", "demo")
#: where a run writes when neither the recipe nor an override sets ``train.out_dir``
RUNS_DIR = "runs"


class ConfigError(ValueError):
    """A mistake in a config file or override: reported as one line, without a traceback."""


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class EncoderConfig:
    """One encoder.

    kind: registry key (``whisper``, ``wavlm``, ``avhubert``).
    source: where the weights come from: a hub id (``openai/whisper-medium.en``), an embedded name
        (``whisper-tiny.en``), a local directory, or a fairseq checkpoint for AV-HuBERT.  ``None`` builds
        the architecture in ``arch`` with random weights (tests, from-scratch training, ``params``).
    arch: architecture config (a JSON file, or a name under ``configs/arch``) used when ``source`` is
        ``None`` or when building on the meta device.
    frozen: freeze the encoder weights (paper); encoder-side LoRA stays trainable.
    train_mode: keep a frozen encoder in train mode (dropout, layerdrop, BatchNorm updates) as the
        reference code does; default eval mode.
    dtype: storage dtype of the encoder weights (``float32``, ``bfloat16``, ``auto``: bf16 where native); inputs are cast to it.
    options: encoder-specific options, parsed by the encoder's own dataclass (see its module).
    """

    kind: str
    source: str | None = None
    arch: str | None = None
    frozen: bool = True
    train_mode: bool = False
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source is None and self.arch is None:
            raise ValueError(f"encoder {self.kind!r} needs a weight `source` or an `arch` config")


@dataclass
class CompressionConfig:
    """Frame compression before the projector: ``stack`` k frames (dim·k) or ``avg-pool`` them (dim).

    kind: ``stack`` (concatenate k consecutive frames, the paper) or ``avg-pool`` (average them).
    ratio: k, frames per LLM token (paper: audio 3 for ASR, 4 for AVSR; video 3 for VSR, 2 for AVSR).
        With ``ratios`` it is the rate used when a caller names none (default: the first of ``ratios``).
    ratios: Matryoshka compression (Llama-MTSK / Omni-AVSR): the stream is trained at each of these
        rates (one projector per rate, the LLM shared) and inference picks one per call
        (``transcribe(rates={"audio": 16})``). ``None``: the single rate ``ratio``.
    ``remainder``: what to do with the last T mod k frames — ``drop`` them (the reference) or
    ``pad`` them with zeros to a full group.
    """

    kind: str = "stack"
    ratio: int | None = None
    ratios: list[int] | None = None
    remainder: str = "drop"

    def __post_init__(self) -> None:
        if self.ratios is not None:
            if (
                not self.ratios
                or any(k < 1 for k in self.ratios)
                or len(set(self.ratios)) != len(self.ratios)
            ):
                raise ValueError(f"compression ratios must be distinct integers >= 1, got {self.ratios}")
            if self.ratio is None:
                self.ratio = self.ratios[0]
            elif self.ratio not in self.ratios:
                raise ValueError(f"compression ratio {self.ratio} is not one of ratios {self.ratios}")
        elif self.ratio is None:
            self.ratio = 3
        if self.ratio < 1:
            raise ValueError(f"compression ratio must be >= 1, got {self.ratio}")
        if self.remainder not in ("drop", "pad"):
            raise ValueError(f"compression remainder must be 'drop' or 'pad', got {self.remainder!r}")

    @property
    def rates(self) -> list[int]:
        """Every rate the stream is trained at (``[ratio]`` without Matryoshka)."""
        return list(self.ratios) if self.ratios is not None else [self.ratio]


@dataclass
class ProjectorConfig:
    """Linear(dim_in → hidden) → ReLU → Linear(hidden → H_llm) [→ LayerNorm(H_llm)].

    hidden: width of the projector's hidden layer (paper: 2048).
    layernorm: end with a LayerNorm over the LLM width (the reference's ``layernorm_projector``).
    shared_across_rates: with several compression ``ratios``, one projector for every rate instead of
        one per rate (Llama-MTSK's single projector; only for ``avg-pool``, whose output width does not
        depend on the rate).
    """

    hidden: int = 2048
    layernorm: bool = False
    shared_across_rates: bool = False


@dataclass
class StreamConfig:
    """One group of LLM input tokens: an encoder applied to some batch fields, compressed, projected.

    The usual streams are ``audio`` (inputs [audio]) and ``video`` (inputs [video]).  The
    ``audiovisual_avhubert`` mode with one shared projector is a single stream with inputs
    [audio, video] on one AV-HuBERT and no delimiter tokens, as in the reference.

    encoder: name of the encoder (a key of ``model.encoders``) that reads this stream's inputs.
    inputs: batch fields fed to the encoder: ``[audio]``, ``[video]`` or ``[audio, video]``.
    compression: frames per LLM token and how they merge.
    projector: the MLP from encoder features to LLM embeddings.
    begin_token / end_token: tokens around the stream's tokens in the LLM input (``<audio>`` …
        ``</audio>``); both ``null`` for none.
    """

    encoder: str
    inputs: list[str]
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    begin_token: str | None = None
    end_token: str | None = None

    def __post_init__(self) -> None:
        bad = set(self.inputs) - set(MODALITIES)
        if bad or not self.inputs:
            raise ValueError(f"stream inputs must be a non-empty subset of {MODALITIES}, got {self.inputs}")
        if (self.begin_token is None) != (self.end_token is None):
            raise ValueError("set both begin_token and end_token, or neither")
        if self.projector.shared_across_rates and self.compression.kind == "stack":
            raise ValueError(
                "projector.shared_across_rates needs compression kind avg-pool: a stack of k frames is "
                "k times wider at each rate, so every rate needs its own projector"
            )


@dataclass
class LoRAConfig:
    """LoRA on the LLM with the reference semantics.

    r = hidden_size / reduction, scaling = alpha / reduction (paper: reduction 64, alpha 8 → r 64 and
    scaling 0.125 on a 4096-wide model).  Implemented with PEFT: ``lora_alpha = scaling · r``.

    reduction: r = LLM hidden size / reduction (the reference's ``reduction_lora``; paper 64).
    alpha: scaling = alpha / reduction (paper 8).
    targets: LLM linear layers that get LoRA (paper: ``q_proj``, ``v_proj``).
    dropout: LoRA dropout.
    rank: r itself, overriding hidden/reduction when set.
    strategy: for multi-task / multi-rate models (Llama-MTSK, Omni-AVSR): ``shared`` — one adapter for
        every task and rate; ``specific`` — one adapter per ``specific_to`` key (Omni-LoRA-T,
        MTSK's specific-scale LoRA); ``shared+specific`` — both, summed (Omni-LoRA-ST, MTSK's
        multi-specific-scale LoRA).
    specific_to: what a specific adapter is keyed on: ``task`` (asr / vsr / avsr), ``rates`` (the
        combination of compression rates) or ``task+rates``.
    """

    reduction: int = 64
    alpha: float = 8.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    dropout: float = 0.0
    rank: int | None = None  # overrides hidden/reduction when set
    strategy: str = "shared"
    specific_to: str = "task"

    def __post_init__(self) -> None:
        if self.strategy not in LORA_STRATEGIES:
            raise ValueError(f"llm.lora.strategy must be one of {LORA_STRATEGIES}, got {self.strategy!r}")
        if self.specific_to not in LORA_SPECIFIC_TO:
            raise ValueError(
                f"llm.lora.specific_to must be one of {LORA_SPECIFIC_TO}, got {self.specific_to!r}"
            )

    def rank_for(self, hidden_size: int) -> int:
        return self.rank if self.rank is not None else max(1, hidden_size // self.reduction)

    @property
    def scaling(self) -> float:
        return self.alpha / self.reduction


@dataclass
class LLMConfig:
    """The causal LM.

    source: hub id, embedded name (``smollm2-135m``) or local directory; ``None`` builds ``arch``
        with random weights.
    arch: a transformers config JSON (file, or name under ``configs/arch``) for meta-device builds.
    tokenizer: where the tokenizer comes from when it differs from ``source`` (random-weight builds).
    dtype: storage dtype of the frozen LLM weights (``float32``, ``bfloat16``, ``auto``: bf16 where the
        machine computes it natively, else float32).
    lora: LoRA on q/v; ``None`` trains only the projectors (reference ``add_PETF_LLM None``).
    gradient_checkpointing: recompute the LLM's activations in the backward pass (less memory, one
        more forward pass of the LLM per step).
    attn_implementation: transformers attention: ``sdpa``, ``eager`` or ``flash_attention_2``.
    """

    source: str | None = "smollm2-135m"
    arch: str | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.source is None and self.arch is None:
            raise ValueError("llm needs a weight `source` or an `arch` config")


@dataclass
class ModelConfig:
    """The whole Llama-AVSR model.

    encoders: named encoders (a stream refers to one by name; two streams may share one).
    streams: ordered; LLM input = BOS, stream tokens in this order, prompt, transcript, EOS.
    prompt: ``None`` picks the paper's prompt from the modalities the streams read (single-task models).
    tasks: one model for several tasks (Omni-AVSR): any of ``asr``, ``vsr``, ``avsr``; a task uses the
        streams whose inputs are among its modalities, with its own prompt. ``None``: the one task of
        all the streams (the original Llama-AVSR).
    task_prompts: prompts of a multi-task model by task (default: the paper's prompt of each task).
    sink_loss_factor: weight of the attention-sink loss (follow-up paper); 0 disables it.
    sink_loss_layers: LLM layers whose hidden states the sink loss reads (default: every intermediate one).
    """

    encoders: dict[str, EncoderConfig]
    streams: dict[str, StreamConfig]
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt: str | None = None
    tasks: list[str] | None = None
    task_prompts: dict[str, str] | None = None
    sink_loss_factor: float = 0.0
    sink_loss_layers: list[int] | None = None

    def __post_init__(self) -> None:
        if not self.streams:
            raise ValueError("model needs at least one stream")
        for name, s in self.streams.items():
            if s.encoder not in self.encoders:
                raise ValueError(f"stream {name!r} uses unknown encoder {s.encoder!r}")
        if self.tasks is not None:
            if not self.tasks or len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"model.tasks must list distinct tasks, got {self.tasks}")
            for t in self.tasks:
                if t not in TASKS:
                    raise ValueError(
                        f"model.tasks: unknown task {t!r}{did_you_mean(t, TASKS)}; tasks: {list(TASKS)}"
                    )
                if not self.task_streams(t):
                    raise ValueError(
                        f"model.tasks: {t} reads {list(TASKS[t])}, and no stream reads only those "
                        f"(streams: { {n: s.inputs for n, s in self.streams.items()} })"
                    )
            if self.prompt is not None:
                raise ValueError(
                    "a multi-task model has one prompt per task: set model.task_prompts, not model.prompt"
                )
            bad = set(self.task_prompts or {}) - set(self.tasks)
            if bad:
                raise ValueError(f"model.task_prompts: {sorted(bad)} are not among model.tasks {self.tasks}")
        elif self.task_prompts:
            raise ValueError("model.task_prompts needs model.tasks (a single-task model uses model.prompt)")
        if self.prompt is None and self.tasks is None:
            self.prompt = PROMPTS[frozenset(self.modalities)]
        lora = self.llm.lora
        if lora is not None and lora.strategy != "shared":
            if "task" in lora.specific_to and len(self.task_names) < 2:
                raise ValueError(
                    f"llm.lora.specific_to={lora.specific_to} needs several model.tasks (this model has "
                    f"{self.task_names})"
                )
            if "rates" in lora.specific_to and not self.multi_rate:
                raise ValueError(
                    f"llm.lora.specific_to={lora.specific_to} needs a stream with several compression ratios"
                )

    @property
    def modalities(self) -> list[str]:
        """Batch fields the model reads, in canonical order."""
        used = {m for s in self.streams.values() for m in s.inputs}
        return [m for m in MODALITIES if m in used]

    # -- tasks and rates (Omni-AVSR / Llama-MTSK) -------------------------------------------------

    @property
    def multi_task(self) -> bool:
        return self.tasks is not None and len(self.tasks) > 1

    @property
    def multi_rate(self) -> bool:
        return any(len(s.compression.rates) > 1 for s in self.streams.values())

    @property
    def task_names(self) -> list[str]:
        """The tasks the model serves: ``model.tasks``, or the one task of all its streams."""
        if self.tasks is not None:
            return list(self.tasks)
        try:
            return [task_of(self.modalities)]
        except ValueError:  # pragma: no cover - every modality subset is a task
            return []

    @property
    def default_task(self) -> str:
        """The task that uses the most streams (AVSR for an audio-visual model)."""
        return max(self.task_names, key=lambda t: len(self.task_streams(t)))

    def task_streams(self, task: str | None) -> list[str]:
        """Streams a task uses, in config order (all of them for ``None`` or a single-task model)."""
        if task is None or self.tasks is None:
            return list(self.streams)
        mods = set(TASKS[task])
        return [n for n, s in self.streams.items() if set(s.inputs) <= mods]

    def prompt_for(self, task: str | None) -> str:
        if self.tasks is None or task is None:
            return self.prompt if self.prompt is not None else PROMPTS[frozenset(self.modalities)]
        return (self.task_prompts or {}).get(task) or PROMPTS[frozenset(TASKS[task])]

    def default_rates(self, task: str | None = None) -> dict[str, int]:
        return {n: self.streams[n].compression.ratio for n in self.task_streams(task)}

    def rate_combinations(self, task: str | None = None) -> list[dict[str, int]]:
        """Every combination of the rates of a task's streams, e.g. audio {4, 16} × video {2, 5}."""
        combos: list[dict[str, int]] = [{}]
        for n in self.task_streams(task):
            combos = [{**c, n: k} for c in combos for k in self.streams[n].compression.rates]
        return combos

    def check_task(self, task: str | None) -> str:
        """The task to run (``None`` → the default); a clear error for one the model was not trained on."""
        if task is None:
            return self.default_task
        if task not in self.task_names:
            raise ValueError(f"task {task!r}: this model was trained for {self.task_names}")
        return task

    def check_rates(self, rates: dict[str, int] | None, task: str | None = None) -> dict[str, int]:
        """Rates for a task's streams: the given ones over the defaults; a clear error for a stream the
        task does not use or a rate the stream was not trained at."""
        out = self.default_rates(task)
        for name, k in (rates or {}).items():
            if name not in self.streams:
                raise ValueError(
                    f"rates: unknown stream {name!r}; this model's streams: {list(self.streams)}"
                )
            trained = self.streams[name].compression.rates
            if int(k) not in trained:
                raise ValueError(f"rates: stream {name!r} was trained at rates {trained}, not {k}")
            if name in out:
                out[name] = int(k)
        return out

    def adapters_for(self, task: str | None, rates: dict[str, int]) -> list[str]:
        """The LLM LoRA adapters active for a task at these rates (``llm.lora.strategy``)."""
        lora = self.llm.lora
        if lora is None:
            return []
        if lora.strategy == "shared":
            return [SHARED_ADAPTER]
        task = task or self.default_task
        key = {"task": task, "rates": rates_key(rates), "task+rates": f"{task}_{rates_key(rates)}"}[
            lora.specific_to
        ]
        return ([SHARED_ADAPTER] if lora.strategy == "shared+specific" else []) + [key]

    def all_adapters(self) -> list[str]:
        """Every LoRA adapter the model holds, shared first."""
        names: list[str] = []
        for t in self.task_names:
            for r in self.rate_combinations(t):
                for a in self.adapters_for(t, r):
                    if a not in names:
                        names.append(a)
        return names


# --------------------------------------------------------------------------------------------------
# dict / YAML conversion


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert plain YAML data into the annotated type (dataclasses, optionals, lists, dicts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        # the member whose container kind matches the value (e.g. list[str] | dict[str, float])
        kind = dict if isinstance(value, dict) else list if isinstance(value, list) else None
        for a in non_none:
            if kind is not None and (typing.get_origin(a) or a) is kind:
                return _convert(a, value, where)
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    try:
        if tp is float and isinstance(value, int | str) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, str):
            return int(value)
    except ValueError:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp in (int, float, bool, str) and value is not None and not isinstance(value, tp):
        if not (tp is float and isinstance(value, int)) and not (
            tp is str and isinstance(value, int | float)
        ):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return str(value) if tp is str else value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; an unknown or missing key is a one-line
    :class:`ConfigError` naming its full dotted path (with "did you mean" for a misspelt key)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            path = f"{where}.{key}" if where else key
            prefix = f"{where}." if where else ""
            hint = did_you_mean(str(key), names).replace(" '", f" '{prefix}", 1) or (
                f"; {where or cls.__name__} has {', '.join(names)}"
            )
            raise ConfigError(f"unknown key {path!r}{hint}")
    required = [
        f.name
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if required:
        raise ConfigError(f"missing config key {(f'{where}.' if where else '') + required[0]!r}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass → plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(obj)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c=value`` in a nested dict, creating mappings as needed."""
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a mapping")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``1e-3``, ``true``, ``[1,2]``)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.path=value (e.g. train.lr=5e-4)")
        key, raw = ov.split("=", 1)
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: the value is not valid YAML ({_yaml_error(e)})") from e
        set_dotted(data, key.strip(), value)
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a mapping with a key written twice: PyYAML keeps the last
    silently, so a recipe edited in two places would run with whichever came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are not duplicates
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:  # a list as a key: the base loader reports it
                continue
            if key in seen:
                where = f"lines {seen[key]} and {line}" if line != seen[key] else f"line {line}"
                raise yaml.constructor.ConstructorError(problem=f"key {key!r} is written twice ({where})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def parse_yaml(text: str) -> Any:
    """YAML text → data, with :class:`_UniqueKeyLoader` (a repeated key is an error)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_error(e)})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping")
    return data


# --------------------------------------------------------------------------------------------------
# recipes by name


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``paper/asr``, ``demo/avsr``, …)."""
    return sorted(
        f"{g}/{p.stem}" for g in RECIPE_GROUPS for p in (CONFIG_DIR / g).glob("*.yaml") if p.is_file()
    )


def find_recipe(name: str | Path) -> Path:
    """A config file by path, or a packaged recipe by name (``paper/asr``; ``.yaml`` optional)."""
    path = Path(name)
    if path.is_file():
        return path
    rel = str(name).removesuffix(".yaml")
    cand = CONFIG_DIR / f"{rel}.yaml"
    if rel.split("/")[0] in RECIPE_GROUPS and cand.is_file():
        return cand
    recipes = list_recipes()
    raise ConfigError(
        f"config {str(name)!r} is neither a file nor a packaged recipe{did_you_mean(rel, recipes)}; "
        f"recipes: {', '.join(recipes)}"
    )


def recipe_name(path: str | Path) -> str:
    """The name runs are called after: ``paper-asr`` for a packaged recipe, the file stem otherwise."""
    path = Path(path).resolve()
    try:
        return "-".join(path.relative_to(CONFIG_DIR.resolve()).with_suffix("").parts)
    except ValueError:
        return path.stem


def load_recipe(name: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a recipe (name or path), apply ``key.path=value`` overrides, and name the output folder
    ``runs/<recipe>`` unless the recipe or an override sets ``train.out_dir``."""
    path = find_recipe(name)
    data = apply_overrides(load_yaml(path), overrides or [])
    train = data.setdefault("train", {}) if data.get("train") is None else data["train"]
    if isinstance(train, dict) and train.get("out_dir") is None:
        train["out_dir"] = f"{RUNS_DIR}/{recipe_name(path)}"
    return data


def dump_yaml(data: dict[str, Any]) -> str:
    """A resolved config as YAML that ``--config`` reads back (keys in declaration order)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------------
# every key, with type, default and help


@dataclass(frozen=True)
class KeyInfo:
    """One config key: dotted path, type, default (``None`` when required) and help text."""

    key: str
    type: str
    default: str
    help: str


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return str(tp).replace("typing.", "")


_DOC_ENTRY = re.compile(r"^\s{0,4}((?:``\w+``|\w+)(?:\s*/\s*(?:``\w+``|\w+))*)\s*:\s+(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Help for each field of ``cls``: ``name: text`` entries of its docstring (``a / b: text`` documents
    several), or the ``#:`` comment above the field, or a ``# comment`` after it."""
    names = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines()[1:]:
        m = _DOC_ENTRY.match(line)
        keys = [k.strip().strip("`") for k in m.group(1).split("/")] if m else []
        if keys and set(keys) <= names:
            current = keys
            for k in keys:
                docs[k] = m.group(2).strip()
        elif current and line.startswith(" ") and line.strip():
            for k in current:
                docs[k] += " " + line.strip()
        else:
            current = []
    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return docs
    comment: list[str] = []
    for line in source:
        text = line.strip()
        if text.startswith("#:"):
            comment.append(text[2:].strip())
            continue
        m = re.match(r"^(\w+)\s*:[^#]*(?:#\s*(.*))?$", text)
        if m and m.group(1) in names and m.group(1) not in docs:
            if comment or m.group(2):
                docs[m.group(1)] = " ".join(comment) or m.group(2).strip()
        comment = []
    return docs


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if dataclasses.is_dataclass(value):
        return None  # its own keys are listed
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def config_keys(cls: type, prefix: str = "") -> list[KeyInfo]:
    """Every key of the dataclass ``cls`` (nested ones dotted), with type, default and help.
    Mappings of sub-configs (``model.encoders``) list their entries' keys under ``<name>``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[KeyInfo] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        args = typing.get_args(tp)
        sub = next((a for a in (tp, *args) if dataclasses.is_dataclass(a)), None)
        if typing.get_origin(tp) is dict and args and dataclasses.is_dataclass(args[1]):
            out.append(KeyInfo(key, f"mapping of {args[1].__name__}", "(required)", docs.get(f.name, "")))
            out += config_keys(args[1], f"{key}.<name>.")
        elif sub is not None:
            if type(None) in args:
                out.append(KeyInfo(key, f"{sub.__name__} | null", "", docs.get(f.name, "")))
            out += config_keys(sub, f"{key}.")
        else:
            default = _default_text(f)
            out.append(
                KeyInfo(
                    key, _type_name(tp), "(required)" if default is None else default, docs.get(f.name, "")
                )
            )
    return out


def torch_dtype(name: str):
    """``"bfloat16"`` → ``torch.bfloat16`` (clear error for unknown names); ``"auto"`` → bfloat16 where
    the machine computes it natively, else float32 (see :mod:`llama_avsr.devices`)."""
    import torch

    from llama_avsr.devices import auto_dtype_name

    dt = getattr(torch, auto_dtype_name(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (use float32, bfloat16, float16 or auto)")
    return dt


def find_arch(name: str) -> Path:
    """Resolve an architecture config: a path, or a name under the packaged ``configs/arch``."""
    p = Path(name)
    if p.is_file():
        return p
    for root in (Path(__file__).parent / "configs" / "arch", Path(__file__).parents[2] / "configs" / "arch"):
        for cand in (root / name, root / f"{name}.json"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"architecture config {name!r} not found (a JSON path or a name in configs/arch)")
