"""Cross-field checks of a config: ranges and combinations its types cannot say. Every problem is returned,
not just the first. Whether the files a config names exist is checked by the command that uses them
(`check_run_files` for training)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from dia_tpu.config.schema import Config, DataConfig, ModelConfig, SamplesConfig
from dia_tpu.config.stages import PrepareConfig, TranscribeConfig
from dia_tpu.errors import UserError
from dia_tpu.hub import HUB_ID


def validate(cfg: Config) -> list[str]:
    """Cross-field checks; returns every problem rather than stopping at the first."""
    p: list[str] = []
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval
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
    if t.mesh_data < 1:
        p.append(f"train.mesh_data: must be >= 1, got {t.mesh_data}")
    elif t.mesh_data > 1 and t.sharding != "fsdp":
        p.append(f"train.mesh_data={t.mesh_data}: a mesh is for train.sharding=fsdp (on XLA); set it or leave 1")
    if t.overwrite and t.resume is not None:
        p.append(f"train.overwrite deletes the run that train.resume={t.resume} would continue: choose one")
    if t.max_steps == 0 and t.epochs <= 0:
        p.append("train.epochs: must be > 0 when train.max_steps is 0")
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    if not 0.0 <= t.unconditional_frac < 1.0:
        p.append(f"train.unconditional_frac: must be in [0, 1), got {t.unconditional_frac}")
    if any(not isinstance(w, (int, float)) or w < 0 for w in t.codebook_weights):
        p.append(f"train.codebook_weights: must be non-negative numbers, got {t.codebook_weights}")
    if t.push_to_hub and not (t.hub_model_id and HUB_ID.fullmatch(t.hub_model_id)):
        p.append(f"train.hub_model_id: train.push_to_hub needs a Hub repository id (org/name), got {t.hub_model_id!r}")
    if e.early_stopping_patience < 0:
        p.append(f"eval.early_stopping_patience: must be >= 0, got {e.early_stopping_patience}")
    p += _validate_model_extras(m)
    p += _validate_audio_eval(cfg)
    p += _validate_samples(cfg.samples)
    p += _validate_data_extras(d)
    p += _validate_prepare(cfg.prepare)
    p += _validate_transcribe(cfg.transcribe, cfg.prepare)
    return p


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
    if not lora.parts:
        p.append("model.lora.parts: empty; name 'encoder', 'decoder' or both")
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
    if not 0.0 <= d.prompt_pairs <= 1.0:
        p.append(f"data.prompt_pairs: must be in [0, 1], got {d.prompt_pairs}")
    if not 0 <= d.prompt_max_frames < d.max_audio_frames:
        p.append(
            f"data.prompt_max_frames: must be in [0, data.max_audio_frames={d.max_audio_frames}), "
            f"got {d.prompt_max_frames}"
        )
    if d.prompt_pairs and d.buckets:
        p.append(
            "data.prompt_pairs: not with data.buckets (a paired item's length changes per epoch, a bucket's "
            "cannot); leave data.buckets empty"
        )
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
    if len(r.delimiter) != 1:
        p.append(f"prepare.delimiter: must be one character, got {r.delimiter!r}")
    if r.max_seconds <= 0:
        p.append(f"prepare.max_seconds: must be > 0, got {r.max_seconds}")
    if r.min_sample_rate <= 0:
        p.append(f"prepare.min_sample_rate: must be > 0, got {r.min_sample_rate}")
    if r.window_seconds is not None and r.window_seconds < 0:
        p.append(f"prepare.window_seconds: must be >= 0 (0: whole clips), got {r.window_seconds}")
    kind, colon, model = r.aligner.partition(":")
    if not (r.aligner in ("espeak", "pocketsphinx", "none") or (kind == "ctc" and (model or not colon))):
        p.append(f"prepare.aligner: {r.aligner!r} is not espeak, pocketsphinx, none, ctc or ctc:<hub id or folder>")
    return p


def _validate_transcribe(t: TranscribeConfig, r: PrepareConfig) -> list[str]:
    p: list[str] = []
    for key in (
        "speaker_threshold",
        "min_voice_similarity",
        "match_voices",
        "vad_threshold",
        "max_clipped",
        "min_confidence",
    ):
        if not 0.0 <= getattr(t, key) <= 1.0:
            p.append(f"transcribe.{key}: must be in [0, 1], got {getattr(t, key)}")
    for key in ("speakers", "min_silence", "min_seconds", "max_pause"):
        if getattr(t, key) < 0:
            p.append(f"transcribe.{key}: must be >= 0, got {getattr(t, key)}")
    kind, _, model = t.diarizer.partition(":")
    if kind not in ("none", "pyannote") or (kind == "pyannote") != bool(model):
        p.append(f"transcribe.diarizer: {t.diarizer!r} is not none or pyannote:<hub id or folder>")
    if t.min_seconds >= r.max_seconds:
        p.append(f"transcribe.min_seconds: must be below prepare.max_seconds ({r.max_seconds}), got {t.min_seconds}")
    return p


# What eval.select_by may weigh, and where each figure is in an evaluation's metrics: the schema of what may be
# chosen, checked here; `dia_tpu.evaluation.selection` weighs the figures (lower is better, a similarity negated).
SELECTABLE = {
    "loss": "eval/loss",
    "wer": "audio/wer",
    "cer": "audio/cer",
    "speaker_similarity": "audio/speaker_similarity",
    "mos": "audio/mos",
}


def selection_terms(spec: str) -> dict[str, float]:
    """eval.select_by as {figure: weight}: "wer" is {"wer": 1.0}; "wer=1,loss=0.1" weighs several."""
    terms = {}
    for part in (x.strip() for x in spec.split(",")):
        name, _, weight = part.partition("=")
        if name not in SELECTABLE:
            raise UserError(f"eval.select_by: {name!r} is not one of {', '.join(SELECTABLE)}")
        try:
            terms[name] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"eval.select_by: the weight of {name} must be a number, got {weight!r}") from None
        if not math.isfinite(terms[name]) or terms[name] <= 0:
            raise UserError(f"eval.select_by: the weight of {name} must be > 0, got {weight!r}")
    return terms


def _validate_audio_eval(cfg: Config) -> list[str]:
    p: list[str] = []
    e, a = cfg.eval, cfg.eval.audio
    if a.every < 0:
        p.append(f"eval.audio.every: must be >= 0, got {a.every}")
    elif a.every and (not e.eval_every or a.every % e.eval_every):
        p.append(
            f"eval.audio.every: must be a multiple of eval.eval_every={e.eval_every} (audio is judged after "
            f"the loss evaluation of a step), got {a.every}"
        )
    if a.quality != "none" and (a.quality.partition(":")[0] != "mos" or not a.quality.partition(":")[2]):
        p.append(f"eval.audio.quality: {a.quality!r} is not none or mos:<hub id or folder>")
    if a.limit < 1:
        p.append(f"eval.audio.limit: must be >= 1, got {a.limit}")
    if not (math.isfinite(a.max_seconds) and a.max_seconds > 0):
        p.append(f"eval.audio.max_seconds: must be > 0, got {a.max_seconds}")
    for key, value, kinds in (
        ("asr", a.asr, ("pocketsphinx", "whisper", "none")),
        ("speaker", a.speaker, ("resemblyzer", "xvector", "none")),
    ):
        if value.partition(":")[0] not in kinds:
            p.append(
                f"eval.audio.{key}: {value!r} is not one of {', '.join(kinds)} (whisper and xvector take "
                ":<hub id or folder>)"
            )
    if cfg.data.eval_speakers and cfg.data.eval_dataset is not None:
        p.append("data.eval_speakers: holds out speakers of data.dataset, but data.eval_dataset is set too: pick one")
    if a.every and not cfg.data.eval_size and cfg.data.eval_dataset is None and not cfg.data.eval_speakers:
        p.append(
            "eval.audio.every: audio is judged at evaluations, and there are none (data.eval_size is 0 and "
            "data.eval_dataset is null): hold out items"
        )
    try:
        terms = selection_terms(e.select_by)
    except ValueError as err:
        return p + [str(err)]
    if set(terms) - {"loss"} and a.every != e.eval_every:
        p.append(
            f"eval.select_by: {e.select_by!r} needs audio figures at every evaluation: set eval.audio.every "
            f"to eval.eval_every ({e.eval_every}), got {a.every}"
        )
    if ("wer" in terms or "cer" in terms) and a.asr == "none":
        p.append("eval.select_by: wer and cer need eval.audio.asr")
    if "speaker_similarity" in terms and a.speaker == "none":
        p.append("eval.select_by: speaker_similarity needs eval.audio.speaker")
    if "mos" in terms and a.quality == "none":
        p.append("eval.select_by: mos needs eval.audio.quality")
    return p


def _validate_samples(s: SamplesConfig) -> list[str]:
    p: list[str] = []
    if s.every < 0:
        p.append(f"samples.every: must be >= 0, got {s.every}")
    if s.every > 0 and not s.prompts:
        p.append("samples.prompts: samples.every is set but there are no prompts to generate")
    p += sampling_problems(s, lambda field: f"samples.{field}")
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
    return p


def sampling_problems(s, name) -> list[str]:
    """Sampling settings generation cannot use, for samples.* and `dia-tpu generate`'s flags alike. `s` has
    guidance_scale, temperature, top_p, top_k (None: the model's defaults) and max_seconds (None: no limit);
    `name(field)` is how the message names a field."""
    p: list[str] = []
    if s.guidance_scale is not None and not (math.isfinite(s.guidance_scale) and s.guidance_scale >= 1):
        p.append(f"{name('guidance_scale')} must be a number >= 1 (1 turns guidance off), got {s.guidance_scale}")
    if s.temperature is not None and not (math.isfinite(s.temperature) and s.temperature > 0):
        p.append(f"{name('temperature')} must be a number > 0, got {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        p.append(f"{name('top_p')} must be in (0, 1], got {s.top_p}")
    if s.top_k is not None and s.top_k < 1:
        p.append(f"{name('top_k')} must be >= 1, got {s.top_k}")
    if s.max_seconds is not None and not (math.isfinite(s.max_seconds) and s.max_seconds > 0):
        p.append(f"{name('max_seconds')} must be a number of seconds > 0, got {s.max_seconds}")
    return p


def check_run_files(cfg: Config) -> list[str]:
    """Files a training run reads before its first step that the config names: the sample prompts' audio."""
    return [
        f"samples.prompts[{i}].audio: file not found: {prompt.audio}"
        for i, prompt in enumerate(cfg.samples.prompts)
        if prompt.audio is not None and not Path(prompt.audio).is_file()
    ]
