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
class LoraSettings:
    # LoRA rank; 0 trains the full model. With a rank, only the adapters (and `modules_to_save`) train.
    rank: int = 0
    # Scale numerator: the adapter's output is multiplied by alpha / rank.
    alpha: float = 16.0
    # Dropout on the adapter's input.
    dropout: float = 0.0
    # What gets adapters: "attention" (q, k, v, o of self- and cross-attention), "mlp" (gate_up, down),
    # "head" (the output projection to codebook logits), or module names ending in any given word.
    targets: list = field(default_factory=lambda: ["attention"])
    # Which halves the attention and mlp targets cover: "encoder", "decoder".
    parts: list = field(default_factory=lambda: ["encoder", "decoder"])
    # Modules trained in full and saved beside the adapters, by name (e.g. "logits_dense", "embeddings").
    modules_to_save: list = field(default_factory=list)


@dataclass
class FreezeSettings:
    # The text encoder (embedding, layers, norm).
    text_encoder: bool = False
    # The decoder's audio code embeddings.
    audio_embeddings: bool = False
    # The first N decoder layers.
    decoder_layers: int = 0


@dataclass
class ModelConfig:
    # What to fine-tune: a hub id or local directory of a DiaForConditionalGeneration (an export, or the
    # hub's "nari-labs/Dia-1.6B-0626"), or a native Nari Labs checkpoint (a `.pth`/`.safetensors` file, a
    # folder with one beside its config.json, or a hub id with `pretrained_format: native`).
    # None builds a randomly initialised model from `architecture`.
    pretrained: str | None = None
    # "auto" (a native checkpoint when the file or config says so), "hf" or "native".
    pretrained_format: str = "auto"
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
    # torch.compile the model after its weights are loaded (ignored on XLA, which compiles its own graphs).
    compile: bool = False
    # Stereo: 18 codebooks, left 9 + right 9. A 9-codebook pretrained model is widened by copying its
    # code embeddings and output head for the right channel (a warm start).
    stereo: bool = False
    # Delay per codebook; [] keeps the model's (for stereo: the mono pattern for both channels).
    delay_pattern: list = field(default_factory=list)
    # Attention logit scale. Pretrained Dia was trained with 1.0 and keeps it; a model from scratch uses
    # this (null: 1 / sqrt(head_dim)).
    attention_scale: float | None = None
    # LoRA adapters through peft.
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Parts kept fixed during training.
    freeze: FreezeSettings = field(default_factory=FreezeSettings)


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
    # Length buckets in codec frames, e.g. [64, 128, 256]: each batch is padded to the smallest bucket
    # that holds its longest clip instead of to max_audio_frames (a few fixed shapes: XLA compiles one
    # graph per bucket). Empty: every batch is max_audio_frames long.
    buckets: list = field(default_factory=list)
    # Music tag prompts ("rock, guitar, 120 bpm"): per item and epoch (seeded), shuffle the comma-separated
    # tags, drop each with this probability (at least one stays), keep at most `tag_limit` (0: all).
    tag_shuffle: bool = False
    tag_dropout: float = 0.0
    tag_limit: int = 0
    # Language tags in transcripts, e.g. {de: 3} turns "[de]" into byte 3. Values must be unused bytes:
    # not 0 (padding), 1 or 2 (the speaker tags), nor a printable character or whitespace.
    language_tags: dict = field(default_factory=dict)


@dataclass
class PrepareConfig:
    # What --input is: "auto" (detected), "metadata" (folder + metadata.csv: LJSpeech or file|text[|speaker]),
    # "sidecar" (audio files, each with a same-stem .txt transcript), "hf" (a Hugging Face dataset: hub id,
    # save_to_disk folder, or parquet/jsonl/csv files). Files ending .npy/.pt/.safetensors in a metadata.csv
    # or sidecar folder are codes encoded elsewhere and are imported without the codec.
    kind: str = "auto"
    # metadata.csv field delimiter, and the field names in order ([] : the header line if it names a
    # `text` field, else LJSpeech's id|text|normalized_text when there is a wavs/ folder, else file|text|speaker).
    delimiter: str = "|"
    columns: list = field(default_factory=list)
    # Which column (or metadata field) holds what. `audio_column` names the file field of a metadata.csv
    # ("file", or "id" for LJSpeech) or the audio column of a Hugging Face dataset.
    text_column: str = "text"
    audio_column: str = "audio"
    speaker_column: str = "speaker"
    language_column: str = "language"
    # Word or segment timing ([{start, end, text}], seconds): a column, or a same-stem .json sidecar.
    segments_column: str = "segments"
    # Hugging Face datasets: split, config name, and streaming (rows are read as they download).
    split: str = "train"
    hf_config: str | None = None
    streaming: bool = False
    # Codes files: "CT" ([codebooks, frames]), "TC", or "auto" (the axis whose size is the codebook count).
    codes_layout: str = "auto"
    # Longer clips are split at silences between timed segments when the source gives timing, else skipped.
    max_seconds: float = 30.0
    # Audio below this sample rate is skipped (it cannot carry what the codec encodes).
    min_sample_rate: int = 8000
    # Stereo models: left and right encoded separately into 2 x codebooks (mono input is duplicated).
    stereo: bool = False
    # Unicode NFC and collapsed whitespace in transcripts.
    normalize_text: bool = True
    # Items per work shard: the unit of resuming and of splitting work between processes.
    shard_size: int = 256
    # Codec batch size (only clips of equal length share a batch: padding would change codes).
    batch_size: int = 8
    # Codec precision on GPU: "no" (fp32, codes identical everywhere), "bf16" or "fp16" (faster, codes may differ).
    mixed_precision: str = "no"
    # Stop at the first bad input, naming it, instead of skipping it with a reason.
    strict: bool = False


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
    # torch's fused AdamW kernel (one kernel per step for all parameters) on CUDA and CPU; not on XLA.
    fused_optimizer: bool = True
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
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
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
    _choice(p, "model.pretrained_format", m.pretrained_format, ("auto", "hf", "native"))
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
        "prepare.batch_size": cfg.prepare.batch_size,
        "prepare.shard_size": cfg.prepare.shard_size,
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
    p += _validate_model_extras(m)
    p += _validate_samples(cfg.samples)
    p += _validate_data_extras(d)
    p += _validate_prepare(cfg.prepare)
    return p


LORA_TARGETS = ("attention", "mlp", "head")


def _validate_model_extras(m: ModelConfig) -> list[str]:
    p: list[str] = []
    lora, freeze = m.lora, m.freeze
    if lora.rank < 0:
        p.append(f"model.lora.rank: must be >= 0, got {lora.rank}")
    if lora.rank and lora.alpha <= 0:
        p.append(f"model.lora.alpha: must be > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        p.append(f"model.lora.dropout: must be in [0, 1), got {lora.dropout}")
    if lora.rank and not lora.targets:
        p.append("model.lora.targets: empty; name at least one of attention, mlp, head or a module name")
    if any(not isinstance(x, str) or not x for x in lora.targets + lora.modules_to_save):
        p.append("model.lora.targets and modules_to_save: must be non-empty names")
    bad_parts = [x for x in lora.parts if x not in ("encoder", "decoder")]
    if bad_parts or not lora.parts:
        p.append(f"model.lora.parts: must be a non-empty list of 'encoder', 'decoder', got {lora.parts}")
    if freeze.decoder_layers < 0:
        p.append(f"model.freeze.decoder_layers: must be >= 0, got {freeze.decoder_layers}")
    if m.attention_scale is not None:
        if m.pretrained is not None:
            p.append("model.attention_scale: only for models from scratch; pretrained Dia keeps its scale of 1.0")
        elif m.attention_scale <= 0:
            p.append(f"model.attention_scale: must be > 0, got {m.attention_scale}")
    if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in m.delay_pattern):
        p.append(f"model.delay_pattern: must be non-negative integers, got {m.delay_pattern}")
    elif m.stereo and m.delay_pattern and len(m.delay_pattern) != 18:
        p.append(f"model.delay_pattern: a stereo model needs 18 delays (left 9 + right 9), got {len(m.delay_pattern)}")
    return p


# Bytes a language tag may take: control characters other than the pad and speaker ids and whitespace.
LANGUAGE_TAG_BYTES = tuple(b for b in range(3, 32) if chr(b) not in "\t\n\v\f\r") + (127,)


def _validate_data_extras(d: DataConfig) -> list[str]:
    p: list[str] = []
    if any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in d.buckets):
        p.append(f"data.buckets: must be positive frame counts, got {d.buckets}")
    elif d.buckets and max(d.buckets) > d.max_audio_frames:
        p.append(f"data.buckets: {max(d.buckets)} is longer than data.max_audio_frames={d.max_audio_frames}")
    if not 0.0 <= d.tag_dropout < 1.0:
        p.append(f"data.tag_dropout: must be in [0, 1), got {d.tag_dropout}")
    if d.tag_limit < 0:
        p.append(f"data.tag_limit: must be >= 0, got {d.tag_limit}")
    seen: dict[int, str] = {}
    for name, value in d.language_tags.items():
        key = f"data.language_tags.{name}"
        if not isinstance(name, str):
            # YAML reads some bare language codes as other types: `no` (Norwegian) is False.
            p.append(f"{key}: the tag name {name!r} is a {type(name).__name__}, not text; quote it in YAML")
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
            p.append(f"{key}: a tag name is letters, digits, _ and - (written [{name}] in transcripts)")
        if not isinstance(value, int) or isinstance(value, bool) or value not in LANGUAGE_TAG_BYTES:
            why = "the pad or a speaker tag" if value in (0, 1, 2) else "a printable character or whitespace"
            detail = why if isinstance(value, int) and 0 <= value < 256 else "not a byte"
            p.append(f"{key}: {value!r} collides with {detail}; use one of {', '.join(map(str, LANGUAGE_TAG_BYTES))}")
        elif value in seen:
            p.append(f"{key}: byte {value} is also used by [{seen[value]}]")
        else:
            seen[value] = str(name)
    return p


def _validate_prepare(r: PrepareConfig) -> list[str]:
    p: list[str] = []
    _choice(p, "prepare.kind", r.kind, ("auto", "metadata", "sidecar", "hf"))
    _choice(p, "prepare.codes_layout", r.codes_layout, ("auto", "CT", "TC"))
    _choice(p, "prepare.mixed_precision", r.mixed_precision, ("no", "bf16", "fp16"))
    if len(r.delimiter) != 1:
        p.append(f"prepare.delimiter: must be one character, got {r.delimiter!r}")
    if r.max_seconds <= 0:
        p.append(f"prepare.max_seconds: must be > 0, got {r.max_seconds}")
    if r.min_sample_rate <= 0:
        p.append(f"prepare.min_sample_rate: must be > 0, got {r.min_sample_rate}")
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
