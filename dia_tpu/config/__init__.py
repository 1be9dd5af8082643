"""The one typed configuration: its schema, the readers `load` (a config to run with) and `read_saved` (a
config dia_tpu wrote), the checks, and the redaction of credentials in URLs (`secrets`)."""

from dia_tpu.config.checks import check_run_files, sampling_problems, validate
from dia_tpu.config.load import load, read_saved
from dia_tpu.config.sampling import (
    DIA2_SAMPLING,
    GENERATION_FILE,
    SAMPLING,
    described,
    published,
    read_generation_file,
    run_sampling,
    unguided_warning,
)
from dia_tpu.config.schema import (
    DECODINGS,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    FreezeSettings,
    LoraSettings,
    ModelConfig,
    OutputConfig,
    SamplePrompt,
    SamplesConfig,
    TrainConfig,
)
from dia_tpu.config.secrets import redact_tree, redact_url, scrub
from dia_tpu.config.stages import PRECISIONS, SOURCE_KINDS, PrepareConfig, TranscribeConfig

__all__ = [
    "DECODINGS",
    "DIA2_SAMPLING",
    "GENERATION_FILE",
    "PRECISIONS",
    "SAMPLING",
    "SOURCE_KINDS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FreezeSettings",
    "LoraSettings",
    "ModelConfig",
    "OutputConfig",
    "PrepareConfig",
    "SamplePrompt",
    "SamplesConfig",
    "TrainConfig",
    "described",
    "published",
    "read_generation_file",
    "run_sampling",
    "unguided_warning",
    "TranscribeConfig",
    "check_run_files",
    "load",
    "read_saved",
    "redact_tree",
    "redact_url",
    "sampling_problems",
    "scrub",
    "validate",
]
