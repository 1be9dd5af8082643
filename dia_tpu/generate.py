"""synthesize(model, codec, texts, settings) -> waveforms, shared by `dia-tpu generate` and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DacModel, DiaForConditionalGeneration

from dia_tpu.audio import apply_delay, decode, revert_delay
from dia_tpu.data import TEXT_PAD, encode_text


@dataclass
class GenerationSettings:
    guidance_scale: float = 3.0  # classifier-free guidance; 1.0 turns it off
    temperature: float = 1.8  # Dia's generation raises values below 1.0 to 1.0
    top_p: float = 0.90
    top_k: int = 45
    seed: int = 0
    max_seconds: float | None = None  # a script that never emits EOS stops here; None: all the decoder holds
    greedy: bool = False  # argmax decoding instead of sampling


def synthesize(
    model: DiaForConditionalGeneration, codec: DacModel, texts: list[str], settings: GenerationSettings
) -> list[np.ndarray]:
    """Generate one mono waveform at the codec's rate per text, in one batch."""
    ids, mask = _text_batch(model, texts)
    delay = list(model.config.delay_pattern)
    dec = model.config.decoder_config
    frame_rate = codec.config.sampling_rate / codec.config.hop_length
    room = dec.max_position_embeddings - 1 - max(delay)
    max_frames = room if settings.max_seconds is None else max(1, round(settings.max_seconds * frame_rate))
    if max_frames > room:
        raise ValueError(
            f"max_seconds={settings.max_seconds} needs {max_frames} frames but the model's decoder holds at most "
            f"{room} ({room / frame_rate:.1f} s)"
        )
    # The start of every sequence: one BOS row, delayed, so channel c stays BOS for its first delay[c] steps.
    bos = torch.full((len(texts), 1, len(delay)), dec.bos_token_id, dtype=torch.long)
    prefix = apply_delay(bos, delay, dec.bos_token_id, dec.pad_token_id).to(ids.device)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    with torch.random.fork_rng(devices=[] if ids.device.type == "cpu" else [ids.device]):
        torch.manual_seed(settings.seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=prefix,
            decoder_attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=ids.device),
            max_new_tokens=max_frames + max(delay),
            do_sample=not settings.greedy,
            guidance_scale=settings.guidance_scale,
            **({} if settings.greedy else sampling),
        )
    return [decode(codec, codes) for codes in undelay_and_trim(out, delay, dec.eos_token_id)]


def undelay_and_trim(sequences: torch.Tensor, delay: list[int], eos: int) -> list[torch.Tensor]:
    """Generated [B, T, C] (delayed, BOS row first) to per-item code frames [n, C], cut at the first EOS.

    After undoing the delay, frame t of every channel lines up; the end is the first frame holding a
    special token (EOS, or PAD/BOS, whose ids follow it).
    """
    frames = revert_delay(sequences.cpu(), delay)[:, 1:]
    clips = []
    for item in frames:
        special = (item >= eos).any(-1).nonzero()
        end = int(special[0]) if len(special) else len(item)
        clips.append(item[:end])
    return clips


def _text_batch(model: DiaForConditionalGeneration, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    limit = model.config.encoder_config.max_position_embeddings
    encoded = [encode_text(t) for t in texts]
    for text, ids in zip(texts, encoded, strict=True):
        if not ids:
            raise ValueError("empty text: nothing to synthesize")
        if len(ids) > limit:
            raise ValueError(f"text of {len(ids)} tokens exceeds the model's limit of {limit}: {text[:60]!r}...")
    width = max(len(i) for i in encoded)
    ids = torch.full((len(texts), width), TEXT_PAD, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device)
