"""Training settings live in the config layer (:mod:`llama_avsr.experiment`), which inference reads
without importing ``training/``; re-exported here for training code."""

from llama_avsr.experiment import (
    FSDP_SHARDING,
    LOGGERS,
    PRECISIONS,
    QUANTIZATION,
    SHARDED_STRATEGIES,
    ExperimentConfig,
    TrainConfig,
)

__all__ = [
    "FSDP_SHARDING",
    "LOGGERS",
    "PRECISIONS",
    "QUANTIZATION",
    "SHARDED_STRATEGIES",
    "ExperimentConfig",
    "TrainConfig",
]
