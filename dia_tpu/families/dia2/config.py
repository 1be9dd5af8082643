"""Dia2's `config.json` (Nari Labs' upstream format), read strictly and written back unchanged.

The file has four blocks: `data` (channels, vocabularies, special ids, the delay pattern, the second text
stream), `model` (the backbone `decoder`, the `depformer`, the heads' MLP activations, RoPE and norm settings),
`runtime` (the depformer's weights schedule, the longest context) and `assets` (tokenizer and Mimi codec). Every
key upstream reads is known here with upstream's default. Unknown keys and missing required ones are one error
naming them all; so, once the file reads, are the values the model cannot be built with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dia_tpu.errors import UserError


class Dia2ConfigError(UserError):
    """A Dia2 `config.json` that cannot describe a model dia_tpu builds."""


# The keys of each block, with upstream's defaults; REQUIRED marks keys without one.
REQUIRED = object()
_DATA = {
    "channels": REQUIRED,
    "text_vocab_size": REQUIRED,
    "audio_vocab_size": REQUIRED,
    "action_vocab_size": REQUIRED,
    "text_pad_token_id": REQUIRED,
    "text_new_word_token_id": REQUIRED,
    "text_zero_token_id": 7,
    "audio_pad_token_id": None,  # audio_vocab_size - 1
    "audio_bos_token_id": None,  # audio_vocab_size - 2
    "action_pad_token_id": REQUIRED,
    "action_new_word_token_id": REQUIRED,
    "delay_pattern": [],
    "first_word_min_start": 0,
    "max_pad": 0,
    "second_stream_ahead": 0,
    "tokenizer_path": None,
}
# Both stacks' shapes.
_STACK = dict.fromkeys(("n_layer", "n_embd", "n_hidden", "gqa_query_heads", "kv_heads", "gqa_head_dim"), REQUIRED)
_DECODER = {**_STACK, "low_rank_dim": None, "dropout": 0.0}
_DEPFORMER = {
    **_STACK,
    "apply_rope": True,
    "text_embedding": True,
    "mlp_activations": ["silu", "linear"],
}
_MODEL = {
    "decoder": REQUIRED,
    "depformer": REQUIRED,
    "linear": {},
    "dropout": 0.0,
    "rope_min_timescale": 1,
    "rope_max_timescale": 10000,
    "normalization_layer_epsilon": 1e-5,
}
_LINEAR = {"mlp_activations": ["silu", "linear"]}
_RUNTIME = {"weights_schedule": None, "max_context_steps": 1500}  # schedule default: one set per stage
_ASSETS = {"tokenizer": None, "mimi": None}
ACTIVATIONS = ("silu", "swish", "swiglu", "gelu", "geglu", "relu", "linear")


@dataclass(frozen=True)
class Stack:
    """One transformer stack's shape: the backbone's (`model.decoder`) or the depformer's."""

    n_layer: int
    n_embd: int
    n_hidden: int
    heads: int  # gqa_query_heads
    kv_heads: int
    head_dim: int  # gqa_head_dim
    activations: tuple[str, str]  # the gated MLP's: gate, then up


@dataclass(frozen=True)
class Dia2Config:
    """What the model and its token layout are built from; `raw` is the file as read, written back on export."""

    channels: int  # 2 text streams + the audio codebooks
    text_vocab: int
    audio_vocab: int
    action_vocab: int
    text_pad: int
    text_new_word: int
    text_zero: int
    audio_pad: int
    audio_bos: int
    delays: tuple[int, ...]  # one per audio codebook, in frames
    second_stream_ahead: int
    backbone: Stack
    depformer: Stack
    low_rank_dim: int | None  # the backbone's text table, when low-rank
    depformer_rope: bool
    depformer_text: bool  # the depformer's first stage also embeds the text
    rope_min: float
    rope_max: float
    eps: float
    schedule: tuple[int, ...]  # which weight set each depformer stage uses
    max_context: int  # the backbone's RoPE table and the longest generation, in frames
    tokenizer: str | None
    mimi: str | None
    raw: dict

    @property
    def codebooks(self) -> int:
        return self.channels - 2

    @property
    def stages(self) -> int:
        """Depformer stages: one per codebook after the first, which the backbone's own head predicts."""
        return max(self.codebooks - 1, 0)

    @property
    def audio_limit(self) -> int:
        """The depformer's logits keep the ids below both specials (the codec's codebook size)."""
        return min(self.audio_pad, self.audio_bos)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the config as read into `folder` (a checkpoint keeps it beside its weights, as Dia's does)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.raw, indent=2) + "\n")


def read_config(path: str | Path) -> Dia2Config:
    """A Dia2 `config.json` file -> Dia2Config; a file that is not one is an error naming it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise Dia2ConfigError(f"{path}: not a readable JSON config ({err})") from err
    return parse_config(raw, str(path))


def parse_config(raw: object, where: str = "config.json") -> Dia2Config:
    """Upstream's `config.json` dict -> Dia2Config; every unknown, missing or unusable key in one error."""
    if not isinstance(raw, dict):
        raise Dia2ConfigError(f"{where}: a Dia2 config is a JSON object, found {type(raw).__name__}")
    problems: list[str] = []
    top = _block(raw, "", {"data": REQUIRED, "model": REQUIRED, "runtime": REQUIRED, "assets": {}}, problems)
    data = _block(top["data"], "data", _DATA, problems)
    model = _block(top["model"], "model", _MODEL, problems)
    decoder = _block(model["decoder"], "model.decoder", _DECODER, problems)
    depformer = _block(model["depformer"], "model.depformer", _DEPFORMER, problems)
    linear = _block(model["linear"], "model.linear", _LINEAR, problems)
    runtime = _block(top["runtime"], "runtime", _RUNTIME, problems)
    assets = _block(top["assets"], "assets", _ASSETS, problems)
    if problems:
        raise Dia2ConfigError(f"{where}: " + "; ".join(problems))
    codebooks = data["channels"] - 2
    schedule = runtime["weights_schedule"]
    if schedule is None:
        schedule = list(range(max(codebooks - 1, 0)))
    audio_vocab = data["audio_vocab_size"]
    cfg = Dia2Config(
        channels=data["channels"],
        text_vocab=data["text_vocab_size"],
        audio_vocab=audio_vocab,
        action_vocab=data["action_vocab_size"],
        text_pad=data["text_pad_token_id"],
        text_new_word=data["text_new_word_token_id"],
        text_zero=data["text_zero_token_id"],
        audio_pad=audio_vocab - 1 if data["audio_pad_token_id"] is None else data["audio_pad_token_id"],
        audio_bos=audio_vocab - 2 if data["audio_bos_token_id"] is None else data["audio_bos_token_id"],
        delays=tuple(data["delay_pattern"]),
        second_stream_ahead=data["second_stream_ahead"],
        backbone=_stack(decoder, linear["mlp_activations"]),
        depformer=_stack(depformer, depformer["mlp_activations"]),
        low_rank_dim=decoder["low_rank_dim"],
        depformer_rope=bool(depformer["apply_rope"]),
        depformer_text=bool(depformer["text_embedding"]),
        rope_min=model["rope_min_timescale"],
        rope_max=model["rope_max_timescale"],
        eps=model["normalization_layer_epsilon"],
        schedule=tuple(schedule),
        max_context=runtime["max_context_steps"],
        tokenizer=assets["tokenizer"] or data["tokenizer_path"],
        mimi=assets["mimi"],
        raw=raw,
    )
    if problems := _unusable(cfg):
        raise Dia2ConfigError(f"{where}: " + "; ".join(problems))
    return cfg


def _block(value: object, name: str, keys: dict, problems: list[str]) -> dict:
    """A block's keys with defaults filled in; unknown and missing keys go to `problems`."""
    shown = name or "the top level"
    if not isinstance(value, dict):
        problems.append(f"{shown} must be an object, found {type(value).__name__}")
        return {k: (None if v is REQUIRED else v) for k, v in keys.items()}
    prefix = f"{name}." if name else ""
    problems += [f"unknown key {prefix}{k}" for k in sorted(set(value) - set(keys))]
    problems += [f"missing key {prefix}{k}" for k, v in keys.items() if v is REQUIRED and k not in value]
    return {k: value.get(k, None if v is REQUIRED else v) for k, v in keys.items()}


def _stack(block: dict, activations: list) -> Stack:
    return Stack(
        block["n_layer"],
        block["n_embd"],
        block["n_hidden"],
        block["gqa_query_heads"],
        block["kv_heads"],
        block["gqa_head_dim"],
        tuple(str(a).lower() for a in activations),
    )


def _unusable(cfg: Dia2Config) -> list[str]:
    """Values the model cannot be built or run with, in the file's own key names."""
    problems = []
    if cfg.codebooks < 1:
        problems.append(f"data.channels={cfg.channels}: needs the 2 text streams and at least one codebook")
    if len(cfg.delays) != cfg.codebooks:
        problems.append(f"data.delay_pattern has {len(cfg.delays)} delays for {cfg.codebooks} codebooks")
    elif min(cfg.delays, default=1) < 1:
        # At step 0 a codebook of delay 0 would read a frame nothing has written yet.
        problems.append(f"data.delay_pattern {list(cfg.delays)}: every delay must be at least 1")
    if len(cfg.schedule) != cfg.stages or any(not isinstance(i, int) or i < 0 for i in cfg.schedule):
        problems.append(
            f"runtime.weights_schedule {list(cfg.schedule)}: one non-negative weight-set index per depformer "
            f"stage ({cfg.stages})"
        )
    for name, stack in (("model.decoder", cfg.backbone), ("model.depformer", cfg.depformer)):
        if stack.head_dim % 2:
            problems.append(f"{name}.gqa_head_dim={stack.head_dim}: RoPE needs an even head size")
        if stack.kv_heads < 1 or stack.heads % stack.kv_heads:
            problems.append(f"{name}: gqa_query_heads={stack.heads} is not a multiple of kv_heads={stack.kv_heads}")
        if len(stack.activations) != 2 or not set(stack.activations) <= set(ACTIVATIONS):
            problems.append(f"{name}: mlp_activations {list(stack.activations)}: two of {', '.join(ACTIVATIONS)}")
    if cfg.depformer.kv_heads != cfg.depformer.heads:
        # The depformer projects queries, keys and values together, with as many heads each.
        problems.append(
            f"model.depformer: kv_heads={cfg.depformer.kv_heads} must equal gqa_query_heads={cfg.depformer.heads}"
        )
    for key, value, vocab in (
        ("text_pad_token_id", cfg.text_pad, cfg.text_vocab),
        ("text_new_word_token_id", cfg.text_new_word, cfg.text_vocab),
        ("text_zero_token_id", cfg.text_zero, cfg.text_vocab),
        ("audio_pad_token_id", cfg.audio_pad, cfg.audio_vocab),
        ("audio_bos_token_id", cfg.audio_bos, cfg.audio_vocab),
    ):
        if not 0 <= value < vocab:
            problems.append(f"data.{key}={value} is outside its vocabulary of {vocab}")
    if cfg.max_context < 1:
        problems.append(f"runtime.max_context_steps={cfg.max_context} must be positive")
    return problems
