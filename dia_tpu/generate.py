"""Speech from text with transformers' Dia generation; shared by `dia-tpu generate` and in-training samples.

Sampling draws from one seeded `torch.Generator` per item, never from the global RNG, so an item's audio
depends only on its text, prompt and seed: not on the batch it runs in, and not on anything else the
process does with random numbers (training included).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DacModel, DiaForConditionalGeneration, LogitsProcessor
from transformers.utils import logging as hf_logging

from dia_tpu.audio import apply_delay, decode, encode, load_channels, revert_delay
from dia_tpu.data import TEXT_PAD, encode_text


class _TopKIsUsed(logging.Filter):
    """generate() runs with do_sample=False (sampling is a processor here), so transformers flags `top_k` as
    unused; Dia's guidance step does read it, and the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "flags are not valid and may be ignored: ['top_k']" not in record.getMessage()


hf_logging.get_logger("transformers.generation.configuration_utils").addFilter(_TopKIsUsed())


@dataclass
class GenerationSettings:
    guidance_scale: float = 3.0  # classifier-free guidance; 1.0 turns it off
    temperature: float = 1.8  # divides the logits before sampling
    top_p: float = 0.90  # nucleus sampling; 1.0 keeps every token
    top_k: int = 45  # sample among this many tokens; also the candidate set of the guidance step
    seed: int = 0  # item i of a call uses seed + i
    max_seconds: float | None = None  # a script that never emits EOS stops here; None: all the decoder holds
    greedy: bool = False  # argmax decoding instead of sampling
    language_tags: dict | None = None  # the training run's data.language_tags, so "[de]" reads as it was trained


@dataclass
class VoicePrompt:
    """Audio to continue (voice cloning): its codes and what is said in it, with speaker tags."""

    codes: torch.Tensor  # [n, C] undelayed codec frames
    transcript: str
    source: str = "audio prompt"  # named in errors


def load_voice_prompt(codec: DacModel, path: str | Path, transcript: str, model_codebooks: int = 0) -> VoicePrompt:
    """Decode `path` (any rate or channel count: resampled to the codec's, downmixed, or for a stereo model,
    whose `model_codebooks` are twice the codec's, split into left and right) and encode it."""
    if not transcript.strip():
        raise ValueError(f"audio prompt {path}: its transcript is empty; give what is said in it, with [S1]/[S2] tags")
    stereo = model_codebooks == 2 * codec.config.n_codebooks
    waves = load_channels(path, codec.config.sampling_rate, stereo)
    codes = torch.from_numpy(np.concatenate(encode(codec, waves), axis=1)).long()
    return VoicePrompt(codes=codes, transcript=transcript.strip(), source=str(path))


def synthesize(
    model: DiaForConditionalGeneration,
    codec: DacModel,
    texts: list[str],
    settings: GenerationSettings,
    prompt: VoicePrompt | None = None,
) -> list[np.ndarray]:
    """One waveform at the codec's rate per text, [samples] or for stereo models [samples, 2] (the audio
    prompt itself is not included)."""
    rate = codec.config.sampling_rate / codec.config.hop_length
    return [decode(codec, codes) for codes in synthesize_codes(model, texts, settings, rate, prompt)]


@torch.no_grad()
def synthesize_codes(
    model: DiaForConditionalGeneration,
    texts: list[str],
    settings: GenerationSettings,
    frame_rate: float,
    prompt: VoicePrompt | None = None,
) -> list[torch.Tensor]:
    """Undelayed code frames [n, C] per text, cut where the model ended the audio (EOS).

    `frame_rate` (codec frames per second) turns `settings.max_seconds` and prompt limits into frames.
    With a prompt, each text is read after the prompt's transcript and the audio continues the prompt's.
    The model's mode is restored afterwards; its weights and dtype are never touched.
    """
    dec = model.config.decoder_config
    delay = list(model.config.delay_pattern)
    scripts = [script_for(text, prompt) for text in texts]
    max_frames = check_request(model.config, scripts, settings, frame_rate, prompt)
    ids, mask = _text_batch(model, scripts, settings.language_tags)
    known = torch.full((1, 1, len(delay)), dec.bos_token_id, dtype=torch.long)
    if prompt is not None:
        known = torch.cat([known, prompt.codes.long()[None]], dim=1)
    # The delayed prefix: channel c is BOS for its first delay[c] steps, then the prompt's codes, then PAD
    # where generation takes over. Dia's generate feeds the rows every channel knows and forces the rest.
    prefix = apply_delay(known, delay, dec.bos_token_id, dec.pad_token_id).repeat(len(texts), 1, 1)
    prefix = prefix.to(ids.device)
    seeds = [settings.seed + i for i in range(len(texts))]
    sampler = None if settings.greedy else _SeededSampler(seeds, len(delay), settings)
    was_training = model.training
    model.eval()
    try:
        with _appended_to_processors(model, sampler):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                decoder_input_ids=prefix,
                decoder_attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=ids.device),
                # Dia forces EOS on the last frame it may generate: one more, so max_frames are audio.
                max_new_tokens=max_frames + 1 + max(delay),
                # Token choice is argmax over what the processors leave; the sampler, when on, leaves one.
                do_sample=False,
                temperature=1.0,
                top_p=1.0,
                top_k=settings.top_k,
                guidance_scale=settings.guidance_scale,
                use_cache=True,
            )
    finally:
        model.train(was_training)
    return undelay_and_trim(out, delay, dec.eos_token_id, skip=known.shape[1])


def undelay_and_trim(sequences: torch.Tensor, delay: list[int], eos: int, skip: int = 1) -> list[torch.Tensor]:
    """Generated [B, T, C] (delayed) to per-item code frames [n, C] after the first `skip` frames (the BOS
    row and any prompt), cut at the first EOS.

    After undoing the delay, frame t of every channel lines up; the end is the first frame holding a
    special token in any channel (EOS, or PAD/BOS, whose ids follow it).
    """
    frames = revert_delay(sequences.cpu(), delay)[:, skip:]
    clips = []
    for item in frames:
        special = (item >= eos).any(-1).nonzero()
        end = int(special[0]) if len(special) else len(item)
        clips.append(item[:end])
    return clips


class _SeededSampler(LogitsProcessor):
    """Temperature, top-k and top-p, then one draw per channel from the item's own generator.

    It runs after Dia's processors, which decide EOS from each row's argmax and force the delayed
    channels' EOS/PAD; those rows arrive with one finite score, so the draw keeps them. Every other
    score is set to -inf, so generate's argmax returns the draw.
    """

    def __init__(self, seeds: list[int], channels: int, settings: GenerationSettings):
        self.seeds, self.channels, self.settings = seeds, channels, settings
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(seed) for seed in self.seeds]
        logits = scores.float() / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            # Drop a token once the tokens ranked above it already hold top_p; the best one always stays.
            drop = cumulative - ordered.softmax(-1) >= s.top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -float("inf"))
        probs = logits.softmax(-1).view(len(self.seeds), self.channels, -1)
        picks = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
        ).view(-1, 1)
        return torch.full_like(scores, -float("inf")).scatter(-1, picks, 0.0)


@contextlib.contextmanager
def _appended_to_processors(model: DiaForConditionalGeneration, processor: LogitsProcessor | None) -> Iterator[None]:
    """Run `processor` last in Dia's logits processors for the calls made inside the block.

    Dia's generate builds its processor list itself and drops a `logits_processor` argument, so the
    sampler is appended to the list its own builder returns, on this instance only and only while
    the block runs.
    """
    if processor is None:
        yield
        return
    build = model._get_logits_processor

    def with_processor(*args, **kwargs):
        processors = build(*args, **kwargs)
        processors.append(processor)
        return processors

    model._get_logits_processor = with_processor
    try:
        yield
    finally:
        del model._get_logits_processor


def script_for(text: str, prompt: VoicePrompt | None) -> str:
    """What the text encoder reads: the prompt's transcript, then the text."""
    return " ".join(part for part in (prompt.transcript if prompt else "", text.strip()) if part)


def check_request(
    config, scripts: list[str], settings: GenerationSettings, rate: float, prompt: VoicePrompt | None = None
) -> int:
    """Raise ValueError naming what does not fit the model (text, prompt, length); else the frames to generate.

    `config` is the model's DiaConfig, so a training run checks its sample prompts before its first step.
    """
    limit = config.encoder_config.max_position_embeddings
    for script in scripts:
        tokens = len(encode_text(script, settings.language_tags))
        if tokens == 0:
            raise ValueError("empty text: nothing to synthesize")
        if tokens > limit:
            raise ValueError(
                f"text of {tokens} byte tokens exceeds the model's text length of {limit}: {script[:60]!r}..."
            )
    dec, delay = config.decoder_config, list(config.delay_pattern)
    prompt_frames = 0
    if prompt is not None:
        codes = prompt.codes
        if codes.ndim != 2 or codes.shape[1] != len(delay) or len(codes) == 0:
            shape = list(codes.shape)
            raise ValueError(f"{prompt.source}: expected codes of shape [frames, {len(delay)}], got {shape}")
        prompt_frames = len(codes)
    # Positions: BOS, the prompt, the audio, its EOS, and the delayed channels' tail.
    room = dec.max_position_embeddings - 2 - max(delay) - prompt_frames
    if prompt is not None and room < 1:
        raise ValueError(
            f"{prompt.source} is {prompt_frames / rate:.1f} s ({prompt_frames} frames), too long for the model's "
            f"decoder ({dec.max_position_embeddings} positions): keep the prompt well under "
            f"{(dec.max_position_embeddings - 2 - max(delay)) / rate:.1f} s"
        )
    if settings.max_seconds is None:
        return room
    wanted = max(1, round(settings.max_seconds * rate))
    if wanted > room:
        after = f" after the {prompt_frames / rate:.1f} s prompt" if prompt is not None else ""
        raise ValueError(
            f"max_seconds={settings.max_seconds} needs {wanted} frames but the model's decoder holds at most "
            f"{room} ({room / rate:.1f} s){after}"
        )
    return wanted


def _text_batch(
    model: DiaForConditionalGeneration, texts: list[str], language_tags: dict | None
) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [encode_text(t, language_tags) for t in texts]
    width = max(len(i) for i in encoded)
    ids = torch.full((len(texts), width), TEXT_PAD, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    device = next(model.parameters()).device
    return ids.to(device), mask.to(device)
