"""Dia2's network with upstream's parameter names, and a training forward over whole sequences in one pass.

Upstream runs the model one frame at a time against a preallocated cache. Here the same weights run over a
whole token grid at once:

- the **backbone** (`transformer`) reads, at each frame t, the two text streams and every codebook's token at t
  (the sum of their embeddings), attends causally over frames, and gives the action logits (pad or new word)
  and codebook 0's logits for frame t + 1;
- the **depformer** then predicts codebooks 1..N-1 of frame t + 1 from the backbone's normalised hidden state at
  t: stage s reads codebook s's token of frame t + 1 (stage 0 also the text the backbone reads at t + 1), with
  the input projection, attention projections and head of stage s (`runtime.weights_schedule` lets stages share
  weight sets), and attends causally over the stages. Every frame's stages run together.

The grid is `[B, 2 + N, T + 1]`: frames 0..T-1 feed the backbone, frames 1..T condition the depformer and are
the targets. Shapes depend only on B, N and T, so XLA compiles the step once. Attention is unscaled (upstream's
`scale=1.0`) on RMS-normalised queries and keys with rotate-half RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dia_tpu.families.dia2.config import Dia2Config, Stack

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "swiglu": nn.SiLU,
    "gelu": nn.GELU,
    "geglu": nn.GELU,
    "relu": nn.ReLU,
    "linear": nn.Identity,
}


@dataclass
class Dia2Logits:
    """A training forward's logits, frame t predicting frame t + 1."""

    action: torch.Tensor  # [B, T, action vocab]: pad (0) or new word (1)
    cb0: torch.Tensor  # [B, T, audio vocab]: codebook 0
    depth: torch.Tensor  # [B, T, N - 1, audio limit]: codebooks 1..N-1


def rotary(x: torch.Tensor, positions: torch.Tensor, head_dim: int, rope_min: float, rope_max: float) -> torch.Tensor:
    """Rotate-half RoPE of `x` [..., L, H, D] at `positions` [L], the angles computed in fp32."""
    half = head_dim // 2
    fraction = (2.0 * torch.arange(half, device=x.device)) / head_dim
    inv_freq = (1.0 / (rope_min * (rope_max / rope_min) ** fraction)).float()
    angles = positions.float()[:, None] * inv_freq[None, :]
    table = torch.cat((angles, angles), dim=-1)
    cos, sin = table.cos()[:, None, :].to(x.dtype), table.sin()[:, None, :].to(x.dtype)
    first, second = torch.chunk(x, 2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal, unscaled attention of [B, L, H, D] queries over [B, L, Hkv, D] keys and values -> [B, L, H * D].
    Grouped kv heads serve consecutive query heads."""
    groups = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in fp32 and returned in its input's precision: under bf16 autocast the normalisation keeps
    fp32's accuracy (and torch's fused kernel, which wants input and weight of one dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class TextEmbedding(nn.Module):
    """The two text streams' shared table (optionally low-rank), projected per stream; the second stream adds
    nothing where it holds the pad id."""

    def __init__(self, vocab: int, dim: int, pad: int, low_rank: int | None = None):
        super().__init__()
        self.pad = pad
        self.embedding = nn.Embedding(vocab, low_rank or dim)
        self.main_proj = nn.Linear(low_rank or dim, dim, bias=False)
        self.second_proj = nn.Linear(low_rank or dim, dim, bias=False)

    def forward(self, main: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        out = self.main_proj(self.embedding(main))
        other = self.second_proj(self.embedding(second))
        return out + other * (second != self.pad).unsqueeze(-1).to(other.dtype)


class GatedMlp(nn.Module):
    def __init__(self, stack: Stack):
        super().__init__()
        self.hidden = stack.n_hidden
        self.wi = nn.Linear(stack.n_embd, 2 * stack.n_hidden, bias=False)
        self.wo = nn.Linear(stack.n_hidden, stack.n_embd, bias=False)
        self.gate, self.up = (_ACTIVATIONS[name]() for name in stack.activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.wi(x).unflatten(-1, (2, self.hidden)).unbind(-2)
        return self.wo(self.gate(gate) * self.up(up))


class Attention(nn.Module):
    """The backbone's grouped-query attention over frames."""

    def __init__(self, cfg: Dia2Config):
        super().__init__()
        s = cfg.backbone
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.head_dim
        self.rope = (cfg.rope_min, cfg.rope_max)
        self.q_proj = nn.Linear(s.n_embd, s.heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.n_embd, s.kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.n_embd, s.kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.n_embd, bias=False)
        self.q_norm = RMSNorm(s.head_dim, eps=cfg.eps)
        self.k_norm = RMSNorm(s.head_dim, eps=cfg.eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.heads, self.head_dim)))
        k = self.k_norm(self.k_proj(x).unflatten(-1, (self.kv_heads, self.head_dim)))
        v = self.v_proj(x).unflatten(-1, (self.kv_heads, self.head_dim))
        q, k = (rotary(t, positions, self.head_dim, *self.rope) for t in (q, k))
        return self.o_proj(attend(q, k, v))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Dia2Config):
        super().__init__()
        self.pre_norm = RMSNorm(cfg.backbone.n_embd, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.post_norm = RMSNorm(cfg.backbone.n_embd, eps=cfg.eps)
        self.mlp = GatedMlp(cfg.backbone)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.pre_norm(x), positions)
        return x + self.mlp(self.post_norm(x))


class Backbone(nn.Module):
    """Upstream's `transformer`: text and audio embeddings summed per frame, causal layers, two heads."""

    def __init__(self, cfg: Dia2Config):
        super().__init__()
        d = cfg.backbone.n_embd
        self.audio_embeds = nn.ModuleList(nn.Embedding(cfg.audio_vocab, d) for _ in range(cfg.codebooks))
        self.text_embed = TextEmbedding(cfg.text_vocab, d, cfg.text_pad, cfg.low_rank_dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.backbone.n_layer))
        self.norm = RMSNorm(d, eps=cfg.eps)
        self.action_head = nn.Linear(d, cfg.action_vocab, bias=False)
        self.cb0_head = nn.Linear(d, cfg.audio_vocab, bias=False)
        self.checkpointing = False
        self.checkpoint_function = None  # None: torch's, non-reentrant; on XLA torch_xla's (set by training)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """tokens [B, 2 + N, L] at `positions` [L] -> (normalised hidden [B, L, D], action, cb0 logits)."""
        x = self.text_embed(tokens[:, 0], tokens[:, 1])
        for index, table in enumerate(self.audio_embeds):
            x = x + table(tokens[:, 2 + index])
        for layer in self.layers:
            x = _run(layer, self.checkpointing, self.checkpoint_function, x, positions)
        hidden = self.norm(x)
        return hidden, self.action_head(hidden), self.cb0_head(hidden)


class StageAttention(nn.Module):
    """The depformer's attention over a frame's stages: queries, keys and values projected together, with the
    weight set the schedule gives each stage."""

    def __init__(self, cfg: Dia2Config):
        super().__init__()
        s = cfg.depformer
        self.heads, self.head_dim, self.schedule = s.heads, s.head_dim, cfg.schedule
        self.rope = (cfg.rope_min, cfg.rope_max) if cfg.depformer_rope else None
        inner = s.heads * s.head_dim
        sets = sorted(set(cfg.schedule))
        self.in_proj = nn.ModuleDict({str(i): nn.Linear(s.n_embd, 3 * inner, bias=False) for i in sets})
        self.out_proj = nn.ModuleDict({str(i): nn.Linear(inner, s.n_embd, bias=False) for i in sets})
        self.q_norm = RMSNorm(s.head_dim, eps=cfg.eps)
        self.k_norm = RMSNorm(s.head_dim, eps=cfg.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, S, D], the S stages of M frames -> [M, S, D]."""
        qkv = _per_stage(self.in_proj, self.schedule, x).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1]), qkv[:, :, 2]
        if self.rope is not None:
            stages = torch.arange(x.shape[1], device=x.device)
            q, k = (rotary(t, stages, self.head_dim, *self.rope) for t in (q, k))
        return _per_stage(self.out_proj, self.schedule, attend(q, k, v))


class DepformerLayer(nn.Module):
    def __init__(self, cfg: Dia2Config):
        super().__init__()
        self.pre_norm = RMSNorm(cfg.depformer.n_embd, eps=cfg.eps)
        self.post_norm = RMSNorm(cfg.depformer.n_embd, eps=cfg.eps)
        self.self_attention = StageAttention(cfg)
        self.mlp = GatedMlp(cfg.depformer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.pre_norm(x))
        return x + self.mlp(self.post_norm(x))


class Depformer(nn.Module):
    """Upstream's `depformer`: codebooks 1..N-1 of a frame, stage by stage, from the backbone's hidden state."""

    def __init__(self, cfg: Dia2Config):
        super().__init__()
        d, stages = cfg.depformer.n_embd, cfg.stages
        self.schedule, self.limit = cfg.schedule, cfg.audio_limit
        self.audio_embeds = nn.ModuleList(nn.Embedding(cfg.audio_vocab, d) for _ in range(stages))
        self.text_embed = TextEmbedding(cfg.text_vocab, d, cfg.text_pad) if cfg.depformer_text else None
        sets = sorted(set(cfg.schedule))
        self.depformer_in = nn.ModuleDict({str(i): nn.Linear(cfg.backbone.n_embd, d, bias=False) for i in sets})
        self.layers = nn.ModuleList(DepformerLayer(cfg) for _ in range(cfg.depformer.n_layer))
        self.norm = RMSNorm(d, eps=cfg.eps)
        self.logits = nn.ModuleList(nn.Linear(d, cfg.audio_vocab, bias=False) for _ in range(stages))
        self.checkpointing = False
        self.checkpoint_function = None

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """hidden [M, D_backbone], the tokens stages read: audio [M, S] (codebooks 0..S-1), text [M, 2]
        -> logits [M, S, audio limit]."""
        stages = len(self.audio_embeds)
        x = _per_stage(self.depformer_in, self.schedule, hidden[:, None].expand(-1, stages, -1))
        tokens = torch.stack([table(audio[:, s]) for s, table in enumerate(self.audio_embeds)], dim=1)
        if self.text_embed is not None:
            first = self.text_embed(text[:, 0], text[:, 1])
            tokens = torch.cat((tokens[:, :1] + first[:, None], tokens[:, 1:]), dim=1)
        x = x + tokens
        for layer in self.layers:
            x = _run(layer, self.checkpointing, self.checkpoint_function, x)
        x = self.norm(x)
        return torch.stack([head(x[:, s]) for s, head in enumerate(self.logits)], dim=1)[..., : self.limit]


class Dia2Model(nn.Module):
    """Dia2 with upstream's module tree (`transformer.*`, `depformer.*`), so its `model.safetensors` loads and
    saves key for key."""

    def __init__(self, cfg: Dia2Config):
        super().__init__()
        self.config = cfg
        self.transformer = Backbone(cfg)
        self.depformer = Depformer(cfg)

    def forward(self, tokens: torch.Tensor, unconditional: torch.Tensor | None = None) -> Dia2Logits:
        """tokens [B, 2 + N, T + 1] -> the logits of frames 1..T. `unconditional` [B] (bool) gives those items
        the guidance branch's backbone text (the zero id, then pad); their depformer still reads the text."""
        cfg, steps = self.config, tokens.shape[-1] - 1
        inputs = tokens[:, :, :steps]
        if unconditional is not None:
            blank = torch.tensor([cfg.text_zero, cfg.text_pad], device=tokens.device)[None, :, None]
            text = torch.where(unconditional[:, None, None], blank, inputs[:, :2])
            inputs = torch.cat((text, inputs[:, 2:]), dim=1)
        positions = torch.arange(steps, device=tokens.device)
        hidden, action, cb0 = self.transformer(inputs, positions)
        after = tokens[:, :, 1:].transpose(1, 2).flatten(0, 1)  # [B * T, 2 + N]: what frame t + 1 holds
        depth = self.depformer(hidden.flatten(0, 1), after[:, 2 : 2 + cfg.stages], after[:, :2])
        return Dia2Logits(action, cb0, depth.unflatten(0, (tokens.shape[0], steps)))


def _per_stage(modules: nn.ModuleDict, schedule: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """x [M, S, ...] through stage s's module of `modules` (the schedule's weight set), for every s."""
    return torch.stack([modules[str(schedule[s])](x[:, s]) for s in range(x.shape[1])], dim=1)


def _run(layer: nn.Module, checkpointing: bool, function, *args):
    if checkpointing and torch.is_grad_enabled() and function is not None:
        return function(layer, *args)
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)
