"""What Dia reads and predicts, as ids: text as UTF-8 bytes with speaker and language tags, music-tag
augmentation, and the delay pattern of the audio codes.

Codes are stored undelayed as [T, C]; `apply_delay` is the only place the delay is applied and
`revert_delay` the only place it is undone.
"""

from __future__ import annotations

import random
import re

import torch

from dia_tpu.config import DataConfig

TEXT_PAD = 0


_SPEAKER_TAGS = {"[S1]": 1, "[S2]": 2}


# Anything shaped like a tag; the ones not in the mapping stay their plain bytes, so splitting on them
# changes nothing for text without tags of its own.
_TAG_SPLIT = re.compile(r"(\[[A-Za-z][A-Za-z0-9_-]*\])")


def encode_text(text: str, language_tags: dict[str, int] | None = None) -> list[int]:
    """Dia's byte tokenizer: UTF-8 bytes, with the speaker tags [S1] and [S2] as the single ids 1 and 2.

    `language_tags` ({"de": 3}) adds tags of the training config: "[de]" becomes the single id 3.
    Tags are matched exactly (case included); unknown ones stay bytes.
    """
    specials = {**_SPEAKER_TAGS, **{f"[{name}]": value for name, value in (language_tags or {}).items()}}
    ids: list[int] = []
    for part in _TAG_SPLIT.split(text):
        ids.extend([specials[part]] if part in specials else part.encode("utf-8"))
    return ids


def unconditional_text(text_ids: torch.Tensor) -> torch.Tensor:
    """What generation feeds the guidance branch: all-zero ids (the attention mask stays the conditional one)."""
    return torch.zeros_like(text_ids)


def tags_augmented(cfg: DataConfig) -> bool:
    """Whether training prompts are read as comma-separated music tags and augmented."""
    return cfg.tag_shuffle or cfg.tag_dropout > 0 or cfg.tag_limit > 0


def split_tags(text: str) -> list[str]:
    """The comma-separated tags of a music prompt, stripped, empty ones left out."""
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def augment_tags(text: str, rng: random.Random, cfg: DataConfig) -> str:
    """Shuffle, drop (each with probability tag_dropout, one always stays) and limit the tags of `text`."""
    tags = split_tags(text)
    if not tags:
        return text
    if cfg.tag_shuffle:
        rng.shuffle(tags)
    kept = [tag for tag in tags if rng.random() >= cfg.tag_dropout] or [rng.choice(tags)]
    return ", ".join(kept[: cfg.tag_limit or None])


def apply_delay(codes: torch.Tensor, delay: list[int], bos: int, pad: int) -> torch.Tensor:
    """Shift channel c right by delay[c]: out[t, c] = codes[t - delay[c], c], BOS before, PAD after.

    codes: [..., T, C]; returns [..., T + max(delay), C].
    """
    steps, channels = codes.shape[-2:]
    total = steps + max(delay)
    src = torch.arange(total, device=codes.device)[:, None] - torch.tensor(delay, device=codes.device)[None, :]
    gathered = codes.gather(-2, src.clamp(0, steps - 1).expand(*codes.shape[:-2], total, channels))
    out = torch.where(src < 0, bos, gathered)
    return torch.where(src >= steps, pad, out)


def revert_delay(delayed: torch.Tensor, delay: list[int]) -> torch.Tensor:
    """Inverse of `apply_delay`: out[t, c] = delayed[t + delay[c], c]; returns [..., T - max(delay), C]."""
    total, channels = delayed.shape[-2:]
    steps = total - max(delay)
    src = torch.arange(steps, device=delayed.device)[:, None] + torch.tensor(delay, device=delayed.device)[None, :]
    return delayed.gather(-2, src.expand(*delayed.shape[:-2], steps, channels))
