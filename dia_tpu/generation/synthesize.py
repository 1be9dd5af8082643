"""Speech from text with transformers' Dia generation; shared by `dia-tpu generate` and in-training samples.

Sampling draws from one seeded `torch.Generator` per item, never from the global RNG, so an item's audio
depends only on its text, prompt and seed: not on the batch it runs in, and not on anything else the
process does with random numbers (training included).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import CompileConfig, DacModel, DiaForConditionalGeneration

from dia_tpu.config import DECODINGS, published, sampling_problems
from dia_tpu.data.audio import decode, encode, header_seconds, load_channels
from dia_tpu.data.clips import AudioRef
from dia_tpu.data.dataset import prompted_text
from dia_tpu.data.tokens import TEXT_PAD, apply_delay, encode_text, revert_delay
from dia_tpu.errors import UserError
from dia_tpu.generation.decode import generate_delayed, processors_beyond_dia
from dia_tpu.generation.sampling import SeededSampler, appended_to_processors

logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    # What each one does: `dia_tpu.config.Sampling`. None: the model's own (`with_model_sampling`).
    guidance_scale: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0  # item i of a call uses seed + i
    max_seconds: float | None = None  # a script that never emits EOS stops here; None: all the decoder holds
    greedy: bool = False  # argmax decoding instead of sampling
    language_tags: dict | None = None  # the training run's data.language_tags, so "[de]" reads as it was trained
    # Which loop decodes: one of `dia_tpu.config.DECODINGS`, which all give the same codes.
    decoding: str = "dia_tpu"


def with_model_sampling(settings: GenerationSettings, model: DiaForConditionalGeneration) -> GenerationSettings:
    """`settings` with the sampling it leaves out (None) taken from the model's generation config (an export's
    holds its run's sampling), then from Dia-1.6B's published settings."""
    own = model.generation_config
    fill = {
        key: published_value if getattr(own, key, None) is None else getattr(own, key)
        for key, published_value in published("dia").items()
        if getattr(settings, key) is None
    }
    # A model folder is data: what its file says is checked as a flag would be.
    filled = SimpleNamespace(**({key: None for key in published("dia")} | fill), max_seconds=None)
    if problems := sampling_problems(filled, lambda key: f"the model's generation_config.json {key}"):
        raise UserError("; ".join(problems))
    return dataclasses.replace(settings, **fill)


def sampling_of(settings: GenerationSettings) -> dict:
    """What a generation sampled with, for the record beside its output."""
    return {
        **{key: getattr(settings, key) for key in published("dia")},
        "greedy": settings.greedy,
        "seed": settings.seed,
    }


@dataclass
class VoicePrompt:
    """Audio to continue (voice cloning): its codes and what is said in it, with speaker tags."""

    codes: torch.Tensor  # [n, C] undelayed codec frames
    transcript: str
    source: str = "audio prompt"  # named in errors


# Cuts (frames before a prompt's end) at which the prompt is encoded again to see how far back a cut reaches.
PROBES = (8, 12)


def load_voice_prompt(
    codec: DacModel, path: str | Path, transcript: str, model_codebooks: int = 0, model_config=None
) -> VoicePrompt:
    """Decode `path` (any rate or channel count: resampled to the codec's, downmixed, or for a stereo model,
    whose `model_codebooks` are twice the codec's, split into left and right) and encode it, keeping the frames
    that do not depend on where the audio was cut (`settled_frames`).

    With `model_config` (the model's DiaConfig, whose channels then give `model_codebooks`), a file whose header
    says it is far too long for the model's decoder is refused before any of it is decoded or encoded; one near
    the limit is judged exactly from its codes, by `check_request`."""
    if not transcript.strip():
        raise UserError(f"audio prompt {path}: its transcript is empty; give what is said in it, with [S1]/[S2] tags")
    if model_config is not None:
        model_codebooks = len(model_config.delay_pattern)
        rate = codec.config.sampling_rate / codec.config.hop_length
        seconds = header_seconds(AudioRef(path=Path(path)))
        if seconds is not None and seconds > _prompt_room(model_config) / rate + PROMPT_SLACK_SECONDS:
            raise UserError(_too_long_prompt(str(path), seconds, model_config, rate))
    stereo = model_codebooks == 2 * codec.config.n_codebooks
    waves = load_channels(path, codec.config.sampling_rate, stereo)
    codes = np.concatenate(encode(codec, waves), axis=1)
    keep = settled_frames(codec, waves, codes)
    return VoicePrompt(codes=torch.from_numpy(codes[:keep]).long(), transcript=transcript.strip(), source=str(path))


def settled_frames(codec: DacModel, waves: list[np.ndarray], codes: np.ndarray) -> int:
    """How many of a prompt's frames to keep: the codec's encoder looks ahead, so the last few frames of audio
    cut from a longer recording are encoded without the sound that followed, into codes the model never saw
    in training (with the demo codec, 2-5 frames wherever a clip is cut, in speech or in a pause). The prompt is
    encoded again cut at each of PROBES frames before its end; the furthest back a cut changes a frame, plus
    one for the frames a probe happens to leave unchanged, is dropped from the end. A causal codec drops none."""
    hop = codec.config.hop_length
    reach = 0
    for back in PROBES:
        cut = len(codes) - back
        if cut < 2:
            continue
        shorter = np.concatenate(encode(codec, [w[: cut * hop] for w in waves]), axis=1)
        changed = np.flatnonzero((shorter[:cut] != codes[:cut]).any(-1))
        reach = max(reach, cut - int(changed[0]) if len(changed) else 0)
    return len(codes) - (reach + 1 if reach else 0)


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

    `frame_rate` (codec frames per second) turns `settings.max_seconds` and prompt limits into frames; sampling
    left out of `settings` is the model's (`with_model_sampling`).
    With a prompt, each text is read after the prompt's transcript and the audio continues the prompt's.
    The model's mode is restored afterwards; its weights and dtype are never touched.
    """
    settings = with_model_sampling(settings, model)
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
    sampler = None if settings.greedy else SeededSampler(seeds, len(delay), settings)
    # Dia forces EOS on the last frame it may generate: one more, so max_frames are audio.
    max_new_tokens = max_frames + 1 + max(delay)
    decoding = settings.decoding
    if decoding == "dia_tpu" and (extra := processors_beyond_dia(model, settings.guidance_scale, settings.top_k)):
        logger.info("the model's generation config adds %s: decoding with transformers' generate", ", ".join(extra))
        decoding = "transformers"
    was_training = model.training
    model.eval()
    try:
        if decoding == "dia_tpu":
            out = generate_delayed(
                model, ids, mask, prefix, max_new_tokens, settings.guidance_scale, settings.top_k, sampler
            )
        else:
            with appended_to_processors(model, sampler):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    decoder_input_ids=prefix,
                    decoder_attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=ids.device),
                    max_new_tokens=max_new_tokens,
                    # Token choice is argmax over what the processors leave; the sampler, when on, leaves one.
                    do_sample=False,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=settings.top_k,
                    guidance_scale=settings.guidance_scale,
                    use_cache=True,
                    **(_compiled_decoding() if decoding == "compiled" else {}),
                )
    finally:
        model.train(was_training)
    return undelay_and_trim(out, delay, dec.eos_token_id, skip=known.shape[1])


def _compiled_decoding() -> dict:
    """generate() arguments for a static cache and transformers' compiled decoding step. transformers compiles
    on its own only on GPUs and TPUs; `_compile_all_devices` is its switch for the other devices (the CPU)."""
    config = CompileConfig(dynamic=False)
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config}


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


def script_for(text: str, prompt: VoicePrompt | None) -> str:
    """What the text encoder reads: the prompt's transcript, then the text (as training pairs build it)."""
    return prompted_text(prompt.transcript if prompt else "", text)


def check_request(
    config, scripts: list[str], settings: GenerationSettings, rate: float, prompt: VoicePrompt | None = None
) -> int:
    """Raise ValueError naming what does not fit the model (text, prompt, length); else the frames to generate.

    `config` is the model's DiaConfig, so a training run checks its sample prompts before its first step.
    """
    if settings.decoding not in DECODINGS:
        raise UserError(f"decoding {settings.decoding!r}: choose one of {', '.join(DECODINGS)}")
    limit = config.encoder_config.max_position_embeddings
    for script in scripts:
        tokens = len(encode_text(script, settings.language_tags))
        if tokens == 0:
            raise UserError("empty text: nothing to synthesize")
        if tokens > limit:
            raise UserError(
                f"text of {tokens} byte tokens exceeds the model's text length of {limit}: {script[:60]!r}..."
            )
    delay = list(config.delay_pattern)
    prompt_frames = 0
    if prompt is not None:
        codes = prompt.codes
        if codes.ndim != 2 or codes.shape[1] != len(delay) or len(codes) == 0:
            shape = list(codes.shape)
            raise UserError(f"{prompt.source}: expected codes of shape [frames, {len(delay)}], got {shape}")
        prompt_frames = len(codes)
    room = _prompt_room(config) - prompt_frames
    if prompt is not None and room < 1:
        raise UserError(_too_long_prompt(prompt.source, prompt_frames / rate, config, rate))
    if settings.max_seconds is None:
        return room
    wanted = max(1, round(settings.max_seconds * rate))
    if wanted > room:
        after = f" after the {prompt_frames / rate:.1f} s prompt" if prompt is not None else ""
        raise UserError(
            f"max_seconds={settings.max_seconds} needs {wanted} frames but the model's decoder holds at most "
            f"{room} ({room / rate:.1f} s){after}"
        )
    return wanted


# How far past the decoder's room a prompt file's header may say it runs before it is refused unread: the frames
# kept of an encoded prompt (`settled_frames`) are a few fewer than its length gives.
PROMPT_SLACK_SECONDS = 1.0


def _prompt_room(config) -> int:
    """Frames a voice prompt may take in the decoder: all positions but BOS, one frame of audio and the delayed
    channels' tail."""
    return config.decoder_config.max_position_embeddings - 2 - max(config.delay_pattern)


def _too_long_prompt(source: str, seconds: float, config, rate: float) -> str:
    return (
        f"{source} is {seconds:.1f} s, too long for the model's decoder "
        f"({config.decoder_config.max_position_embeddings} positions): keep the prompt well under "
        f"{_prompt_room(config) / rate:.1f} s"
    )


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
