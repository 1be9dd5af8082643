"""The one typed configuration: nested dataclasses read from YAML with dotted overrides.

Every field is declared once here with a comment; `load` rejects unknown keys (naming the valid ones),
coerces values to the declared types, and reports every validation problem in a single error.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem found."""


@dataclass
class ModelConfig:
    # Hub id or local directory of a DiaForConditionalGeneration (an export, or the hub's
    # "nari-labs/Dia-1.6B-0626"). None builds a randomly initialised model from `architecture`.
    pretrained: str | None = None
    # DiaConfig keyword arguments for a randomly initialised model (encoder_config, decoder_config,
    # delay_pattern). Ignored when `pretrained` is set.
    architecture: dict = field(default_factory=dict)
    # Hub id or local directory of a transformers DacModel. None builds a random codec from
    # `codec_architecture` (tests and the demo only: its codes carry no meaning).
    codec: str | None = "descript/dac_44khz"
    # DacConfig keyword arguments for a randomly initialised codec.
    codec_architecture: dict = field(default_factory=dict)
    # Seed for random initialisation of the model and codec, so every process builds the same weights.
    init_seed: int = 0
    # "auto" (SDPA, or on XLA "static"), "sdpa", "eager", or "static": eager attention whose masks are
    # built without reading their values, so no step waits on the device (what XLA needs).
    attn_implementation: str = "auto"
    # Recompute activations in the backward pass (non-reentrant) to save memory.
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    # Prepared codes dataset (the output of `dia-tpu prepare`) to train on.
    dataset: str = "runs/demo/codes"
    # Raw source folder `dia-tpu prepare` reads when no --input is given: metadata.csv + audio.
    source: str = "data/sample"
    # Optional separate prepared dataset for evaluation; None holds out `eval_size` items of `dataset`.
    eval_dataset: str | None = None
    # Items held out from `dataset` for evaluation when `eval_dataset` is None (0 disables evaluation).
    eval_size: int = 4
    # Seed of the held-out split and of every per-item random decision (crop window, text dropout).
    seed: int = 1234
    # Text is padded to exactly this many byte tokens; every batch has the same shape.
    max_text_tokens: int = 128
    # Audio is padded to exactly this many codec frames (plus BOS, EOS and the delay); longer clips are cropped.
    max_audio_frames: int = 256
    # Crop long clips at a random (seeded) window instead of keeping their start.
    random_crop: bool = False
    # What a transcript longer than `max_text_tokens` does: "error" stops before training, "skip" drops
    # the item and counts it. Text is never cut silently.
    long_text: str = "error"
    # DataLoader worker processes.
    num_workers: int = 0
    # Codec batch size used by `dia-tpu prepare` (clips of equal length only are batched together).
    prepare_batch_size: int = 8


@dataclass
class TrainConfig:
    # Optimizer steps to run; 0 means run `epochs` full passes instead.
    max_steps: int = 1000
    # Passes over the training set when `max_steps` is 0.
    epochs: int = 1
    # Micro-batch size per process.
    batch_size: int = 2
    # Micro-batches per optimizer step; the loss is normalised by the token count of the whole step.
    gradient_accumulation_steps: int = 1
    # "adamw" (torch) or "adamw_8bit" (bitsandbytes: 8-bit moments, CUDA or CPU, not XLA).
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    # "cosine", "linear" or "constant" (all after `warmup_steps` of linear warm-up).
    lr_scheduler: str = "cosine"
    warmup_steps: int = 50
    # Gradient clipping by global norm; 0 disables it.
    max_grad_norm: float = 1.0
    # "no", "bf16" or "fp16": Accelerate's mixed precision (weights stay fp32).
    mixed_precision: str = "no"
    # Global seed (model dropout, data order).
    seed: int = 42
    # Fraction of items whose text is replaced by what generation's unconditional branch sees (CFG).
    unconditional_frac: float = 0.15
    # Loss weight per codebook; empty means 4.0 on the first codebook and 1.0 on the others.
    codebook_weights: list = field(default_factory=list)
    # Intervals in optimizer steps.
    log_every: int = 10
    save_every: int = 100
    # Rotating checkpoints kept under output.dir/checkpoints (older ones are deleted).
    keep_last: int = 2
    # Trackers: "tensorboard", "wandb", "all" or "none".
    report_to: str = "tensorboard"
    # Resume: None starts fresh, "auto" takes the latest checkpoint in output.dir if any, or a path.
    resume: str | None = None


@dataclass
class EvalConfig:
    # Evaluate every N optimizer steps (0 only at the end).
    eval_every: int = 100
    # Micro-batch size per process for evaluation.
    batch_size: int = 2
    # Keep the whole training state of the lowest eval loss so far in output.dir/best (never rotated).
    keep_best: bool = True
    # Stop after this many evaluations in a row without an eval-loss improvement (0: never stop early).
    early_stopping_patience: int = 0
    # An evaluation improves on the best only when its loss is lower by more than this.
    early_stopping_min_delta: float = 0.0


@dataclass
class SamplePrompt:
    # File stem of the sample's wav under output.dir/samples/step_N/ and its tag in the trackers.
    name: str = ""
    # What to say, with [S1]/[S2] speaker tags.
    text: str = ""
    # Voice cloning: audio to continue (any rate; resampled), and what is said in it.
    audio: str | None = None
    transcript: str | None = None
    # Seed of this prompt's own sampling generator: a prompt sounds the same every time for the same weights.
    seed: int = 0


@dataclass
class SamplesConfig:
    # Generate the prompts every N optimizer steps and at the end (0: never).
    every: int = 0
    prompts: list[SamplePrompt] = field(default_factory=list)
    guidance_scale: float = 3.0
    temperature: float = 1.8
    top_p: float = 0.90
    top_k: int = 45
    # Length limit of each sample, in seconds.
    max_seconds: float = 5.0
    # On XLA devices: "cpu" generates on the main process from a CPU copy of the weights (step-by-step
    # generation on XLA would compile a graph per length); "skip" leaves samples out there.
    on_xla: str = "cpu"


@dataclass
class OutputConfig:
    # Run directory: checkpoints/, final/, logs/ and config.yaml go here.
    dir: str = "runs/demo"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or the defaults), apply `key.sub=value` overrides, validate, return a Config."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    problems: list[str] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form section.key=value")
            continue
        try:
            _set_dotted(raw, key.strip(), yaml.safe_load(value))
        except ConfigError as err:
            problems.append(str(err))
    # Values that fail their type are reported and left at their defaults, so the cross-field
    # checks still run and every problem comes out in one error.
    cfg = _build(Config, raw, "", problems)
    problems.extend(validate(cfg))
    if problems:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n  - " + "\n  - ".join(problems))
    return cfg


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            problems.append(f"unknown key {prefix + str(key)!r}; valid keys: {', '.join(fields)}")
    values = {}
    for name in fields:
        if name not in raw:
            continue
        hint, value, dotted = hints[name], raw[name], prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, dotted + ".", problems)
            continue
        item = _dataclass_item(hint)
        if item is not None:
            if isinstance(value, list):
                values[name] = [_build(item, v, f"{dotted}[{i}].", problems) for i, v in enumerate(value)]
            else:
                problems.append(f"{dotted}: expected a list, got {value!r}")
            continue
        coerced = _coerce(hint, value)
        if coerced is _INVALID:
            names = " or ".join(getattr(k, "__name__", str(k)) for k in _allowed(hint))
            problems.append(f"{dotted}: expected {names}, got {value!r}")
        else:
            values[name] = coerced
    return cls(**values)


_INVALID = object()


def _dataclass_item(hint: Any) -> type | None:
    """The item type of list[SomeDataclass], else None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _allowed(hint: Any) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _coerce(hint: Any, value: Any) -> Any:
    """`value` as the declared type, or _INVALID."""
    allowed = _allowed(hint)
    if value is None:
        return None if type(None) in allowed else _INVALID
    for kind in allowed:
        if kind is float and not isinstance(value, bool):
            # YAML 1.1 reads "3e-5" (no dot) as a string; it is still plainly a number.
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number) and isinstance(value, (int, float, str)):
                return number
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
    return _INVALID


def _choice(problems: list[str], key: str, value: Any, options: tuple) -> None:
    if value not in options:
        problems.append(f"{key}: {value!r} is not one of {', '.join(map(repr, options))}")


def validate(cfg: Config) -> list[str]:
    """Cross-field checks; returns every problem rather than stopping at the first."""
    p: list[str] = []
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
    _choice(p, "model.attn_implementation", m.attn_implementation, ("auto", "sdpa", "eager", "static"))
    _choice(p, "data.long_text", d.long_text, ("error", "skip"))
    _choice(p, "train.lr_scheduler", t.lr_scheduler, ("cosine", "linear", "constant"))
    _choice(p, "train.optimizer", t.optimizer, ("adamw", "adamw_8bit"))
    _choice(p, "train.mixed_precision", t.mixed_precision, ("no", "bf16", "fp16"))
    _choice(p, "train.report_to", t.report_to, ("tensorboard", "wandb", "all", "none"))
    if m.pretrained is None and not m.architecture:
        p.append("model.architecture: required when model.pretrained is null (a random model needs a shape)")
    if m.codec is None and not m.codec_architecture:
        p.append("model.codec_architecture: required when model.codec is null")
    positive = {
        "data.max_text_tokens": d.max_text_tokens,
        "data.max_audio_frames": d.max_audio_frames,
        "data.prepare_batch_size": d.prepare_batch_size,
        "train.batch_size": t.batch_size,
        "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train.log_every": t.log_every,
        "train.save_every": t.save_every,
        "train.keep_last": t.keep_last,
        "eval.batch_size": e.batch_size,
    }
    p += [f"{k}: must be > 0, got {v}" for k, v in positive.items() if v <= 0]
    non_negative = {
        "train.max_steps": t.max_steps,
        "train.warmup_steps": t.warmup_steps,
        "train.max_grad_norm": t.max_grad_norm,
        "train.weight_decay": t.weight_decay,
        "eval.eval_every": e.eval_every,
        "data.eval_size": d.eval_size,
        "data.num_workers": d.num_workers,
    }
    p += [f"{k}: must be >= 0, got {v}" for k, v in non_negative.items() if v < 0]
    if t.max_steps == 0 and t.epochs <= 0:
        p.append("train.epochs: must be > 0 when train.max_steps is 0")
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    if not 0.0 <= t.unconditional_frac < 1.0:
        p.append(f"train.unconditional_frac: must be in [0, 1), got {t.unconditional_frac}")
    if any(not isinstance(w, (int, float)) or w < 0 for w in t.codebook_weights):
        p.append(f"train.codebook_weights: must be non-negative numbers, got {t.codebook_weights}")
    if e.early_stopping_patience < 0:
        p.append(f"eval.early_stopping_patience: must be >= 0, got {e.early_stopping_patience}")
    p += _validate_samples(cfg.samples)
    return p


def _validate_samples(s: SamplesConfig) -> list[str]:
    p: list[str] = []
    _choice(p, "samples.on_xla", s.on_xla, ("cpu", "skip"))
    if s.every < 0:
        p.append(f"samples.every: must be >= 0, got {s.every}")
    if s.every > 0 and not s.prompts:
        p.append("samples.prompts: samples.every is set but there are no prompts to generate")
    if s.temperature <= 0 or s.max_seconds <= 0 or s.top_k < 1 or not 0 < s.top_p <= 1 or s.guidance_scale < 1:
        p.append(
            "samples: need temperature > 0, max_seconds > 0, top_k >= 1, 0 < top_p <= 1 and guidance_scale >= 1; "
            f"got {s.temperature}, {s.max_seconds}, {s.top_k}, {s.top_p}, {s.guidance_scale}"
        )
    names = [prompt.name for prompt in s.prompts]
    for i, prompt in enumerate(s.prompts):
        key = f"samples.prompts[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prompt.name):
            p.append(f"{key}.name: {prompt.name!r} must be a file-name stem (letters, digits, _ . -)")
        elif names.count(prompt.name) > 1:
            p.append(f"{key}.name: {prompt.name!r} is used by more than one prompt")
        if not prompt.text.strip() and prompt.audio is None:
            p.append(f"{key}.text: empty (a prompt needs text, or audio to continue)")
        if (prompt.audio is None) != (prompt.transcript is None):
            p.append(f"{key}: audio and transcript go together (the transcript is what is said in the audio)")
        if prompt.audio is not None and not Path(prompt.audio).is_file():
            p.append(f"{key}.audio: file not found: {prompt.audio}")
    return p
