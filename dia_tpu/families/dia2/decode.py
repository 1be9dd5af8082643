"""Dia2 generation of dia_tpu's own: the model one frame at a time against a cache, the script machine, guidance
and the two samplers, on any device torch runs on.

Each frame runs two branches: the conditional one reads the text streams, the unconditional one reads the zero
id and pad instead (its depformer still reads the text). Guidance does not mix the branches' logits: a top-k of
uncond + scale * (cond - uncond) chooses which of the conditional logits survive, and the sampler draws from
those. The action (pad or new word) is drawn with the text temperature and top-k and goes
through the script machine; codebook 0 (never the audio pad or BOS id) and then each depformer stage's codebook
with the audio ones. Temperature 0 is argmax. When the words run out, generation goes on for the largest delay
plus `MAX_PADDING` frames, so every codebook's last frame is written.

Shapes are fixed for a run (a cache as long as the frame limit, masked past the current frame, frames read and
written at tensor indices) and on XLA each frame's work runs at its end, so XLA compiles a fixed set of graphs once
(the backbone's step, each depformer stage, the sampler's cuts) and every later frame and script reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dia_tpu.config import DIA2_SAMPLING
from dia_tpu.families.dia2.model import Dia2Model, rotary
from dia_tpu.families.dia2.script import INITIAL_PADDING, MAX_PADDING, Entry, ScriptMachine, TextIds

UNGENERATED = -2  # a position of the audio buffer nothing has written yet


@dataclass(frozen=True)
class Dia2Sampling:
    """Upstream's defaults: text 0.6 / 50, audio 0.8 / 50 (`DIA2_SAMPLING`), guidance 2.0 with its top 50."""

    temperature: float = DIA2_SAMPLING.temperature  # audio
    top_k: int = DIA2_SAMPLING.top_k
    text_temperature: float = 0.6
    text_top_k: int = 50
    guidance_scale: float = DIA2_SAMPLING.guidance_scale  # 1.0: off
    guidance_top_k: int = 50
    initial_padding: int = INITIAL_PADDING
    seed: int = 0


def dia2_problems(sampling: Dia2Sampling) -> list[str]:
    """What generation cannot use in `sampling`, each naming its flag."""
    problems = []
    for flag, value in (("--temperature", sampling.temperature), ("--text-temperature", sampling.text_temperature)):
        if not value >= 0:
            problems.append(f"{flag} must be >= 0 (0 is argmax), got {value}")
    for flag, value in (("--top-k", sampling.top_k), ("--text-top-k", sampling.text_top_k)):
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if not sampling.guidance_scale > 0:
        problems.append(f"--guidance-scale must be > 0 (1 is off), got {sampling.guidance_scale}")
    if sampling.guidance_top_k < 0:
        problems.append(f"--guidance-top-k must be >= 0 (0 keeps every logit), got {sampling.guidance_top_k}")
    return problems


@dataclass
class Spoken:
    """A generation's codes, aligned ([N, F] on the host, the prefix cropped unless kept), and each word with its
    frame."""

    codes: torch.Tensor
    words: list[tuple[str, int]]


class _Cache:
    """Keys and values of every attention layer: the backbone's over the frames, the depformer's over one frame's
    stages (refilled each frame)."""

    def __init__(self, model: Dia2Model, branches: int, frames: int, device: torch.device):
        cfg = model.config
        self.backbone = [
            torch.zeros(2, branches, cfg.backbone.kv_heads, frames, cfg.backbone.head_dim, device=device)
            for _ in model.transformer.layers
        ]
        self.depformer = [
            torch.zeros(2, branches, cfg.depformer.heads, max(cfg.stages, 1), cfg.depformer.head_dim, device=device)
            for _ in model.depformer.layers
        ]


def _attend_cached(q: torch.Tensor, store: torch.Tensor, k: torch.Tensor, v: torch.Tensor, at: torch.Tensor):
    """Write k, v [B, Hkv, D] into slot `at` of `store` [2, B, Hkv, L, D] and attend q [B, H, D] over slots
    0..at, unscaled -> [B, H * D]."""
    length = store.shape[3]
    here = F.one_hot(at, length).to(store.dtype).view(1, 1, 1, length, 1)
    store.mul_(1 - here).add_(torch.stack((k, v))[:, :, :, None] * here)
    keys, values = store[0], store[1]
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    hidden = torch.arange(length, device=q.device) > at
    mask = torch.zeros(length, dtype=q.dtype, device=q.device).masked_fill(hidden, float("-inf"))
    out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask.view(1, 1, 1, -1), scale=1.0)
    return out.flatten(1)


def backbone_step(model: Dia2Model, tokens: torch.Tensor, at: torch.Tensor, cache: _Cache, slot: torch.Tensor):
    """tokens [B, 2 + N] of frame `at`, cached in `slot` (0-d long tensors: the slot is the count of steps run,
    which a prefix makes one more than the frame) -> (normalised hidden [B, D], action, cb0 logits)."""
    net, cfg = model.transformer, model.config
    x = net.text_embed(tokens[:, 0], tokens[:, 1])
    for index, table in enumerate(net.audio_embeds):
        x = x + table(tokens[:, 2 + index])
    position = at.view(1)
    for layer, store in zip(net.layers, cache.backbone, strict=True):
        attn, h = layer.attn, layer.pre_norm(x)
        q = attn.q_norm(attn.q_proj(h).unflatten(-1, (attn.heads, attn.head_dim)))
        k = attn.k_norm(attn.k_proj(h).unflatten(-1, (attn.kv_heads, attn.head_dim)))
        v = attn.v_proj(h).unflatten(-1, (attn.kv_heads, attn.head_dim))
        q, k = (rotary(t[:, None], position, attn.head_dim, cfg.rope_min, cfg.rope_max)[:, 0] for t in (q, k))
        x = x + attn.o_proj(_attend_cached(q, store, k, v, slot))
        x = x + layer.mlp(layer.post_norm(x))
    hidden = net.norm(x)
    return hidden, net.action_head(hidden), net.cb0_head(hidden)


def depformer_stage(
    model: Dia2Model, stage: int, hidden: torch.Tensor, previous: torch.Tensor, text: torch.Tensor, cache: _Cache
) -> torch.Tensor:
    """Stage `stage` of a frame: hidden [B, D] from the backbone, the previous codebook's token [B], the text
    [B, 2] (read at stage 0) -> logits [B, audio limit] of codebook stage + 1."""
    net, cfg = model.depformer, model.config
    weights = str(cfg.schedule[stage])
    x = net.depformer_in[weights](hidden) + _stage_tokens(net, stage, previous, text)
    at = torch.tensor(stage, device=hidden.device)
    for layer, store in zip(net.layers, cache.depformer, strict=True):
        attn, h = layer.self_attention, layer.pre_norm(x)
        qkv = attn.in_proj[weights](h).unflatten(-1, (3, attn.heads, attn.head_dim))
        q, k, v = attn.q_norm(qkv[:, 0]), attn.k_norm(qkv[:, 1]), qkv[:, 2]
        if attn.rope is not None:
            q, k = (rotary(t[:, None], at.view(1), attn.head_dim, *attn.rope)[:, 0] for t in (q, k))
        x = x + attn.out_proj[weights](_attend_cached(q, store, k, v, at))
        x = x + layer.mlp(layer.post_norm(x))
    return net.logits[stage](net.norm(x))[..., : net.limit]


def _stage_tokens(net, stage: int, previous: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    tokens = net.audio_embeds[stage](previous)
    if stage == 0 and net.text_embed is not None:
        tokens = tokens + net.text_embed(text[:, 0], text[:, 1])
    return tokens


def guide(logits: torch.Tensor, scale: float, top_k: int) -> torch.Tensor:
    """The conditional branch's logits [..., V] (row 0 of [2, ..., V]) where guidance keeps them, else -inf."""
    cond, uncond = logits[0].float(), logits[1].float()
    if scale == 1.0:
        return cond
    guided = torch.lerp(uncond, cond, scale)
    if top_k > 0:
        # The threshold is the last of topk's values unsorted, as upstream takes it: not always the k-th largest
        # (with k as large as the vocabulary, the last logit's own value), which decides what survives.
        threshold = torch.topk(guided, min(top_k, guided.shape[-1]), dim=-1, sorted=False).values[..., -1:]
        cond = torch.where(guided >= threshold, cond, torch.full_like(cond, float("-inf")))
    return cond


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One id per row of logits [..., V]: argmax at temperature 0, else drawn from the top `top_k`."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float().to(generator.device) / temperature, dim=-1).nan_to_num(0.0)
    indices = None
    if 0 < top_k < probs.shape[-1]:
        probs, indices = torch.topk(probs, top_k, dim=-1)
    rows = probs.reshape(-1, probs.shape[-1]) + 1e-12
    drawn = torch.multinomial(rows, 1, generator=generator).view(*probs.shape[:-1], 1)
    return (drawn if indices is None else indices.gather(-1, drawn))[..., 0].to(logits.device)


@dataclass
class Prefix:
    """A voice prefix: recordings' codes one after another ([N, F], aligned), their words as entries and the
    frames the words' new-word actions are forced at (`prefix_plan`)."""

    codes: torch.Tensor
    entries: list[Entry]
    new_words: list[int]


def prefix_plan(recordings: list[tuple[torch.Tensor, list[Entry], list[int]]]) -> Prefix:
    """Up to two speakers' recordings, each (codes [N, F], entries and start frames of `script.timed_entries`),
    as one prefix, lined up as upstream lines them up: the first speaker's new words 3 frames after their starts,
    the second's at their starts counted from the end of the first's audio."""
    (codes, entries, starts), *rest = recordings
    new_words, entries = [s + 3 for s in starts], list(entries)
    for more_codes, more_entries, more_starts in rest:
        new_words += [s + codes.shape[1] for s in more_starts]
        entries += more_entries
        codes = torch.cat((codes, more_codes), dim=1)
    return Prefix(codes, entries, new_words)


@torch.no_grad()
def generate(
    model: Dia2Model,
    entries: list[Entry],
    ids: TextIds,
    sampling: Dia2Sampling = Dia2Sampling(),
    max_frames: int | None = None,
    prefix: Prefix | None = None,
    keep_prefix: bool = False,
) -> Spoken:
    """Speak `entries` (`script.script_entries`) with `model`, after `prefix` if given (its audio dropped from
    the result unless `keep_prefix`). Stops when the words have run out and the delays are flushed, or after
    `max_frames` (default: the config's `runtime.max_context_steps`)."""
    cfg = model.config
    device = next(model.parameters()).device
    limit = max_frames or cfg.max_context
    # Draws happen where torch keeps generators (CPU, CUDA); on other devices the few logits go to the CPU.
    generator = torch.Generator(device=device if device.type in ("cpu", "cuda") else "cpu").manual_seed(sampling.seed)
    machine = ScriptMachine(ids, cfg.second_stream_ahead)
    state = machine.start([*(prefix.entries if prefix else []), *entries], sampling.initial_padding)
    prefilled = prefix.codes.shape[1] + max(cfg.delays) if prefix else 0
    cache = _Cache(model, 2, limit + prefilled + 1, device)
    audio = torch.full((cfg.codebooks, limit + prefilled + 1), UNGENERATED, dtype=torch.long, device=device)
    step = torch.tensor([[ids.bos, ids.pad], [ids.zero, ids.pad]], device=device)
    blank = torch.tensor([ids.zero, ids.pad], device=device)
    delays = torch.tensor(cfg.delays, device=device)

    def inputs(at: torch.Tensor) -> torch.Tensor:
        """Both branches' tokens at frame `at` (a tensor, so that every frame runs the same graph): their text,
        and each codebook's code or BOS before its delay."""
        codes = torch.where(delays > at, cfg.audio_bos, audio.index_select(1, at.view(1))[:, 0])
        return torch.cat((step, codes[None].expand(2, -1)), dim=1)

    sync = _frame_end(device)
    slots, start = 0, 0
    if prefix is not None:
        audio[:, :prefilled] = _delayed(prefix.codes.to(device), cfg.delays, cfg.audio_pad)
        # The warm-up: every prefix frame through the backbone, the new words forced where the plan says.
        for t in range(prefix.codes.shape[1]):
            at = torch.tensor(t, device=device)
            backbone_step(model, inputs(at), at, cache, torch.tensor(slots, device=device))
            slots += 1
            frame = machine.step(t, state, int(t in prefix.new_words), forced=True)
            step = torch.stack((torch.tensor([frame.main, frame.second], device=device), blank))
            sync()
        # Generation starts again at the prefix's last frame, as upstream does (the cache gains one more entry).
        start = prefix.codes.shape[1] - 1
    audio_specials = torch.tensor([cfg.audio_pad, cfg.audio_bos], device=device)
    flush = max(cfg.delays) + MAX_PADDING
    last, stop, first_word = start - 1, None, None
    for t in range(start, start + limit):
        if (stop is not None and t >= stop) or t + 1 >= audio.shape[1]:
            break
        at, slot = torch.tensor(t, device=device), torch.tensor(slots, device=device)
        hidden, action_logits, cb0_logits = backbone_step(model, inputs(at), at, cache, slot)
        slots += 1
        action = sample(
            guide(action_logits, *_guidance(sampling)), sampling.text_temperature, sampling.text_top_k, generator
        )
        frame = machine.step(t, state, int(action))
        if first_word is None and frame.main == ids.new_word:
            first_word = t - sampling.initial_padding
        text = torch.tensor([frame.main, frame.second], device=device)
        step = torch.stack((text, blank))
        cb0 = guide(cb0_logits, *_guidance(sampling)).index_fill(-1, audio_specials, float("-inf"))
        tokens = [sample(cb0, sampling.temperature, sampling.top_k, generator)]
        for stage in range(cfg.stages):
            logits = depformer_stage(model, stage, hidden, tokens[-1].expand(2), text[None].expand(2, -1), cache)
            tokens.append(sample(guide(logits, *_guidance(sampling)), sampling.temperature, sampling.top_k, generator))
        audio.index_copy_(1, (at + 1).view(1), torch.stack(tokens)[:, None])
        sync()
        last = t
        if stop is None and state.end_step is not None:
            stop = state.end_step + flush
    # Cut on the host: on XLA, every length would be a graph of its own.
    written = audio.cpu()[:, : min(max(last, start - 1) + 2, audio.shape[1])]
    written = torch.where(written == UNGENERATED, cfg.audio_pad, written)
    frames = max(written.shape[1] - max(cfg.delays), 0)
    aligned = torch.stack([written[c, d : d + frames] for c, d in enumerate(cfg.delays)])
    crop = 0 if keep_prefix else max(start if first_word is None else first_word, 0)
    if 0 < crop < aligned.shape[1]:
        aligned = aligned[:, crop:]
    return Spoken(aligned, list(state.said))


def _frame_end(device: torch.device):
    """What ends a frame: on XLA, running what the frame traced (else the next frame's graph would hold every
    frame before it); elsewhere nothing."""
    if device.type != "xla":
        return lambda: None
    import torch_xla

    return torch_xla.sync


def _delayed(codes: torch.Tensor, delays: tuple[int, ...], pad: int) -> torch.Tensor:
    """Aligned codes [N, F] at their delays: [N, F + the largest delay], pad elsewhere."""
    out = codes.new_full((codes.shape[0], codes.shape[1] + max(delays)), pad)
    for c, delay in enumerate(delays):
        out[c, delay : delay + codes.shape[1]] = codes[c]
    return out


def _guidance(sampling: Dia2Sampling) -> tuple[float, int]:
    return sampling.guidance_scale, sampling.guidance_top_k
