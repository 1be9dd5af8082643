"""The configuration's schema: nested dataclasses, every field declared once with its type and a comment.

Choices are `Literal[...]` and lists are typed; `dia_tpu.config.load` checks values against these types.
Fields marked with `path_field` hold paths, resolved as `load` describes. The settings of the stages that make
training data (`prepare`, `transcribe`) are in `dia_tpu.config.stages`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from dia_tpu.config.secrets import redact_tree
from dia_tpu.config.stages import PrepareConfig, TrainPrecision, TranscribeConfig
from dia_tpu.errors import UserError


class ConfigError(UserError):
    """A configuration that cannot be used; the message lists every problem found."""


# A field's metadata key saying how its value is a path: "path" (always a file or folder), "source" (a
# local file or folder, or else a Hugging Face Hub id) or "url" (a local folder, or else an fsspec URL).
PATH_KIND = "path"


def path_field(default: str | None, kind: Literal["path", "source", "url"] = "path") -> typing.Any:
    return field(default=default, metadata={PATH_KIND: kind})


# How speech is decoded (`dia-tpu generate --decoding`), each giving the same codes, tested token for token:
# "dia_tpu": dia_tpu's own loop (`dia_tpu.generation.decode`), without generate's per-step bookkeeping;
# "transformers": transformers' Dia generate; "compiled": generate with a static KV cache and transformers' compiled
# decoding step (CUDA graphs on GPUs), which costs seconds to a minute of compiling per batch and length shape, so
# it pays for long or repeated generation. `dia-tpu bench --task generate` measures all three.
DECODINGS = ("dia_tpu", "transformers", "compiled")


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
    targets: list[str] = field(default_factory=lambda: ["attention"])
    # Which halves the attention and mlp targets cover: "encoder", "decoder".
    parts: list[Literal["encoder", "decoder"]] = field(default_factory=lambda: ["encoder", "decoder"])
    # Modules trained in full and saved beside the adapters, by name (e.g. "logits_dense", "embeddings").
    modules_to_save: list[str] = field(default_factory=list)


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
    pretrained: str | None = path_field(None, "source")
    # "auto" (a native checkpoint when the file or config says so), "hf" or "native".
    pretrained_format: Literal["auto", "hf", "native"] = "auto"
    # Which model family `pretrained` is: "auto" reads its config.json (a Dia2 folder or hub repository in
    # Nari Labs' upstream format is Dia2, anything else Dia), "dia" or "dia2" says so.
    family: Literal["auto", "dia", "dia2"] = "auto"
    # DiaConfig keyword arguments for a randomly initialised model (encoder_config, decoder_config,
    # delay_pattern). Ignored when `pretrained` is set.
    architecture: dict = field(default_factory=dict)
    # Hub id or local directory of a transformers DacModel. None builds a random codec from
    # `codec_architecture` (tests and the demo only: its codes carry no meaning).
    codec: str | None = path_field("descript/dac_44khz", "source")
    # DacConfig keyword arguments for a randomly initialised codec.
    codec_architecture: dict = field(default_factory=dict)
    # Seed for random initialisation of the model and codec, so every process builds the same weights.
    init_seed: int = 0
    # "auto" (SDPA, or on XLA "static"), "sdpa", "eager", or "static": eager attention whose masks are
    # built without reading their values, so no step waits on the device (what XLA needs).
    attn_implementation: Literal["auto", "sdpa", "eager", "static"] = "auto"
    # Recompute activations in the backward pass (non-reentrant) to save memory.
    gradient_checkpointing: bool = False
    # torch.compile the model after its weights are loaded (ignored on XLA, which compiles its own graphs).
    compile: bool = False
    # Stereo: 18 codebooks, left 9 + right 9. A 9-codebook pretrained model is widened by copying its
    # code embeddings and output head for the right channel (a warm start).
    stereo: bool = False
    # Delay per codebook; [] keeps the model's (for stereo: the mono pattern for both channels).
    delay_pattern: list[int] = field(default_factory=list)
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
    dataset: str = path_field("runs/demo/codes")
    # Raw source folder `dia-tpu prepare` reads when no --input is given: metadata.csv + audio.
    source: str = path_field("data/sample", "source")
    # Optional separate prepared dataset for evaluation; None holds out `eval_size` items of `dataset`.
    eval_dataset: str | None = path_field(None)
    # Items held out from `dataset` for evaluation when `eval_dataset` is None (0 disables evaluation).
    eval_size: int = 4
    # Speakers (the dataset's speaker column) held out whole instead: every item of theirs is evaluated and
    # none trained on, so eval.audio's cloning figures are on voices the model never heard. Replaces eval_size.
    eval_speakers: list[str] = field(default_factory=list)
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
    long_text: Literal["error", "skip"] = "error"
    # DataLoader worker processes.
    num_workers: int = 0
    # Length buckets in codec frames, e.g. [64, 128, 256]: each batch is padded to the smallest bucket
    # that holds its longest clip instead of to max_audio_frames (a few fixed shapes: XLA compiles one
    # graph per bucket). Empty: every batch is max_audio_frames long.
    buckets: list[int] = field(default_factory=list)
    # Voice-cloning pairs: this fraction of training items (per epoch, seeded) is preceded by another clip of
    # the same speaker (the dataset's speaker column) as an audio prompt (Dia2: a voice prefix), as generation
    # builds one: the text is the prompt's transcript then the item's, the audio the prompt's codes then the
    # item's, and only the item's frames (and its EOS) carry loss. A prompt is a whole clip of at most
    # `prompt_max_frames` (0: half of max_audio_frames); prompt and item share max_audio_frames, the item
    # cropped to what the prompt leaves. Items whose speaker has no other clip short enough, or whose two
    # transcripts together exceed max_text_tokens, go without.
    prompt_pairs: float = 0.0
    prompt_max_frames: int = 0
    # Music tag prompts ("rock, guitar, 120 bpm"): per item and epoch (seeded), shuffle the comma-separated
    # tags, drop each with this probability (at least one stays), keep at most `tag_limit` (0: all).
    tag_shuffle: bool = False
    tag_dropout: float = 0.0
    tag_limit: int = 0
    # Language tags in transcripts, e.g. {de: 3} turns "[de]" into byte 3. Values must be unused bytes:
    # not 0 (padding), 1 or 2 (the speaker tags), nor a printable character or whitespace.
    language_tags: dict[str, int] = field(default_factory=dict)


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
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    # torch's fused AdamW kernel (one kernel per step for all parameters) on CUDA and CPU; not on XLA.
    fused_optimizer: bool = True
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    # "cosine", "linear" or "constant" (all after `warmup_steps` of linear warm-up).
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 50
    # Gradient clipping by global norm; 0 disables it.
    max_grad_norm: float = 1.0
    # "no", "bf16" or "fp16": Accelerate's mixed precision (weights stay fp32); "auto": bf16 where the device
    # runs it natively (GPUs with bf16, TPUs, CPUs with avx512_bf16 / amx_bf16 or ARM's bf16), fp32 elsewhere.
    # A CPU without those instructions runs bf16 tens of times slower than fp32: the run says so at its start.
    mixed_precision: TrainPrecision = "no"
    # Global seed (model dropout, data order).
    seed: int = 42
    # Weights, gradients and optimizer state divided among the devices (fully sharded data parallel), for
    # models that do not fit one device: "none" keeps a whole copy on every device (plain data parallel);
    # "fsdp" shards them, on XLA (TPU) through SPMD with one process per host driving all its chips, on GPUs
    # and CPU processes through FSDP2 (Accelerate's plugin). See "Sharded training" in the README.
    sharding: Literal["none", "fsdp"] = "none"
    # XLA with sharding=fsdp: the devices form a (data, fsdp) mesh of `mesh_data` groups; the weights are
    # sharded within each group and replicated across groups (hybrid sharding, e.g. one group per host of a
    # pod). 1 shards over all devices. The batch is split over all of them either way.
    mesh_data: int = 1
    # Fraction of items whose text is replaced by what generation's unconditional branch sees (CFG).
    unconditional_frac: float = 0.15
    # Loss weight per codebook; empty means 4.0 on the first codebook and 1.0 on the others.
    codebook_weights: list[float] = field(default_factory=list)
    # Intervals in optimizer steps.
    log_every: int = 10
    save_every: int = 100
    # Rotating checkpoints kept under output.dir/checkpoints (older ones are deleted).
    keep_last: int = 2
    # Trackers: "tensorboard", "wandb", "all" or "none".
    report_to: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"
    # Resume: None starts fresh, "auto" takes the latest checkpoint in output.dir if any, or a checkpoint folder.
    resume: str | None = path_field(None)
    # Resume from a checkpoint of this run older than its newest one, moving the newer ones aside (a branch).
    fork: bool = False
    # Start over in an output.dir that holds an earlier run: its checkpoints, best/, final/, logs, samples and
    # evaluations are deleted first (without it, such a folder is resumed with --resume auto or refused).
    overwrite: bool = False
    # Resuming with other train.* or data.* values than the checkpoint's: "error" lists them, "allow" goes on
    # with the new ones (and records them in output.dir/resume_changes.jsonl).
    resume_changes: Literal["error", "allow"] = "error"
    # At the end of training, upload the export (final/) to the Hugging Face Hub as `hub_model_id` (org/name,
    # created if missing) with a model card, from the main process (`dia-tpu push` does the same later). The
    # Hub token (`hf auth login`, or HF_TOKEN) is checked before training starts.
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = True


@dataclass
class AudioEvalConfig:
    # Generate and judge audio every N optimizer steps, after that step's loss evaluation (0: never); a
    # multiple of eval.eval_every. The prompts are split across processes and the figures gathered.
    every: int = 0
    # A prompts file as `dia-tpu evaluate --prompts` reads it; null: the eval split's items, each with its own
    # clip as the reference and (with `clone`) another clip of its speaker as the voice prompt.
    prompts: str | None = path_field(None)
    # At most this many prompts (the first ones).
    limit: int = 8
    clone: bool = True
    # Speech recogniser: pocketsphinx (offline, weak), whisper (openai/whisper-large-v3-turbo),
    # whisper:<hub id or folder>, or none.
    asr: str = "pocketsphinx"
    # Speaker encoder: resemblyzer (offline), xvector (microsoft/wavlm-base-plus-sv), xvector:<hub id or folder>,
    # or none.
    speaker: str = "resemblyzer"
    # Quality judge: none, or mos:<hub id or folder> (a MOS predictor: an audio model with one regression output).
    quality: str = "none"
    # The prompts' language, for Whisper.
    language: str = "en"
    # Length limit of each utterance; sampling follows samples.* (guidance, temperature, top_p, top_k).
    max_seconds: float = 10.0
    seed: int = 0


@dataclass
class EvalConfig:
    # Evaluate every N optimizer steps (0 only at the end).
    eval_every: int = 100
    # Also evaluate the loss once before the first step (a fresh run only): the starting point of the curve.
    # It is logged at step 0 and never counts for best/ or early stopping.
    eval_on_start: bool = False
    # Micro-batch size per process for evaluation.
    batch_size: int = 2
    # Keep the whole training state of the best evaluation so far in output.dir/best (never rotated).
    keep_best: bool = True
    # Stop after this many evaluations in a row without an improvement (0: never stop early).
    early_stopping_patience: int = 0
    # An evaluation improves on the best only when its score is lower by more than this.
    early_stopping_min_delta: float = 0.0
    # What best/ and early stopping follow (lower is better): loss, wer, cer, speaker_similarity (negated), or a
    # weighted sum such as "wer=1,speaker_similarity=0.5,loss=0.1". Other than loss needs eval.audio.every
    # equal to eval_every.
    select_by: str = "loss"
    audio: AudioEvalConfig = field(default_factory=AudioEvalConfig)


@dataclass
class SamplePrompt:
    # File stem of the sample's wav under output.dir/samples/step_N/ and its tag in the trackers.
    name: str = ""
    # What to say, with [S1]/[S2] speaker tags.
    text: str = ""
    # Voice cloning: audio to continue (any rate; resampled), and what is said in it.
    audio: str | None = path_field(None)
    transcript: str | None = None
    # Seed of this prompt's own sampling generator: a prompt sounds the same every time for the same weights.
    seed: int = 0


@dataclass
class SamplesConfig:
    # Generate the prompts every N optimizer steps and at the end (0: never).
    every: int = 0
    prompts: list[SamplePrompt] = field(default_factory=list)
    # Sampling of samples and eval.audio; null: the model family's published defaults (Dia-1.6B's `SAMPLING` for
    # Dia; upstream's for Dia2, which has no top_p).
    guidance_scale: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    # Length limit of each sample, in seconds.
    max_seconds: float = 5.0
    # On XLA devices: "cpu" generates on the main process from a CPU copy of the weights (step-by-step
    # generation on XLA would compile a graph per length); "skip" leaves samples out there.
    on_xla: Literal["cpu", "skip"] = "cpu"


@dataclass
class OutputConfig:
    # Run directory: checkpoints/, final/, logs/ and config.yaml go here.
    dir: str = path_field("runs/demo")
    # A copy of every complete checkpoint, best/ and final/ on another filesystem, uploaded in the background:
    # a local folder or an fsspec URL (gs://, s3://, hf://buckets/...). `--resume auto` fetches the newest
    # checkpoint from it when output.dir has none as new (a fresh machine). See `dia_tpu.training.mirror`.
    mirror: str | None = path_field(None, "url")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML with the credentials in its URLs redacted (`dia_tpu.config.secrets`): saved
        configs travel with checkpoints and exports, and only the live config needs the real `output.mirror`."""
        Path(path).write_text(yaml.safe_dump(redact_tree(self.to_dict()), sort_keys=False))
