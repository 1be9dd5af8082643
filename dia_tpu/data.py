"""From a prepared codes dataset to fixed-shape training batches.

Targets are built exactly as Dia sees them at inference: text as UTF-8 bytes with [S1]=1, [S2]=2 and
pad 0; audio as BOS, codes, EOS, then the delay pattern (BOS before, PAD after); labels are the delayed
sequence shifted by one with PAD and BOS ignored and EOS kept. Unlike `DiaProcessor`, which left-pads
shorter clips, the collator pads on the right: the BOS row then always sits at position 0, as it does
when generating, and the causal decoder never lets a real position see the padding.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from dia_tpu.audio import apply_delay
from dia_tpu.config import Config, DataConfig

IGNORE_INDEX = -100
TEXT_PAD = 0
_SPEAKER_TAGS = {"[S1]": 1, "[S2]": 2}
_TAG_SPLIT = re.compile(r"(\[S[12]\])")


def encode_text(text: str) -> list[int]:
    """Dia's byte tokenizer: UTF-8 bytes, with the speaker tags [S1] and [S2] as the single ids 1 and 2."""
    ids: list[int] = []
    for part in _TAG_SPLIT.split(text):
        ids.extend([_SPEAKER_TAGS[part]] if part in _SPEAKER_TAGS else part.encode("utf-8"))
    return ids


def unconditional_text(text_ids: torch.Tensor) -> torch.Tensor:
    """What generation feeds the guidance branch: all-zero ids (the attention mask stays the conditional one)."""
    return torch.zeros_like(text_ids)


def item_random(seed: int, epoch: int, index: int, purpose: str) -> random.Random:
    """A generator that depends only on (seed, epoch, item, purpose): every process and worker agrees."""
    return random.Random(f"{seed}:{epoch}:{index}:{purpose}")


class CodesDataset(torch.utils.data.Dataset):
    """Items of a prepared dataset, with the per-item random decisions (crop window, CFG text dropout)."""

    def __init__(self, table: Dataset, cfg: DataConfig, unconditional_frac: float, *, train: bool):
        self.table = table.with_format("numpy", columns=["text", "codes", "frames"])
        self.cfg = cfg
        self.unconditional_frac = unconditional_frac if train else 0.0
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        row = self.table[index]
        codes = torch.from_numpy(np.asarray(row["codes"], dtype=np.int64))
        limit, start = self.cfg.max_audio_frames, 0
        cropped = codes.shape[0] > limit
        if cropped and self.cfg.random_crop and self.train:
            start = item_random(self.cfg.seed, self.epoch, index, "crop").randrange(codes.shape[0] - limit + 1)
        dropped = item_random(self.cfg.seed, self.epoch, index, "cfg").random() < self.unconditional_frac
        return {
            "text_ids": torch.tensor(encode_text(str(row["text"])), dtype=torch.long),
            "codes": codes[start : start + limit],
            "cropped": cropped,
            "unconditional": dropped,
        }


@dataclass
class Collator:
    """Stacks items into one fixed shape: text [B, max_text_tokens], audio [B, max_audio_frames + 1 + max(delay), C]."""

    max_text_tokens: int
    max_audio_frames: int
    delay_pattern: list[int]
    bos: int
    eos: int
    pad: int
    # Complete short batches to this size with copies of their first item whose targets are all ignored,
    # so even the last evaluation batch has the common shape and adds nothing to the sums.
    fill_to: int = 0

    def __call__(self, items: list[dict]) -> dict:
        real = len(items)
        items = items + [items[0]] * (self.fill_to - real)
        size = len(items)
        channels = len(self.delay_pattern)
        text = torch.full((size, self.max_text_tokens), TEXT_PAD, dtype=torch.long)
        text_mask = torch.zeros((size, self.max_text_tokens), dtype=torch.long)
        # BOS row, up to max_audio_frames code rows, one EOS row (PAD when the clip was cut), PAD rows after.
        audio = torch.full((size, self.max_audio_frames + 2, channels), self.pad, dtype=torch.long)
        audio[:, 0] = self.bos
        for i, item in enumerate(items):
            ids, codes = item["text_ids"], item["codes"]
            if len(ids) > self.max_text_tokens:
                raise ValueError(f"text of {len(ids)} tokens exceeds data.max_text_tokens={self.max_text_tokens}")
            text[i, : len(ids)] = ids
            text_mask[i, : len(ids)] = 1
            if item["unconditional"]:
                text[i] = unconditional_text(text[i])
            audio[i, 1 : 1 + len(codes)] = codes
            # A clip cut at the frame limit does not end there, so it must not teach the model to stop.
            audio[i, 1 + len(codes)] = self.pad if item["cropped"] else self.eos
        delayed = apply_delay(audio, self.delay_pattern, self.bos, self.pad)
        labels = delayed[:, 1:].clone()
        labels[(labels == self.pad) | (labels == self.bos)] = IGNORE_INDEX
        labels[real:] = IGNORE_INDEX
        return {
            "input_ids": text,
            "attention_mask": text_mask,
            "decoder_input_ids": delayed[:, :-1],
            "labels": labels,
        }


def make_collator(cfg: DataConfig, model_config, fill_to: int = 0) -> Collator:
    dec = model_config.decoder_config
    return Collator(
        max_text_tokens=cfg.max_text_tokens,
        max_audio_frames=cfg.max_audio_frames,
        delay_pattern=list(model_config.delay_pattern),
        bos=dec.bos_token_id,
        eos=dec.eos_token_id,
        pad=dec.pad_token_id,
        fill_to=fill_to,
    )


@dataclass
class Splits:
    train: CodesDataset
    eval: CodesDataset | None
    cropped: int  # training items longer than max_audio_frames
    skipped_long_text: int  # items dropped because their text exceeds max_text_tokens


def load_splits(cfg: Config) -> Splits:
    """Load the prepared dataset(s), hold out the eval split, apply the long-text policy."""
    d = cfg.data
    table, skipped = _filter_long_text(load_from_disk(d.dataset), d, d.dataset)
    if d.eval_dataset is not None:
        train_table = table
        eval_table, eval_skipped = _filter_long_text(load_from_disk(d.eval_dataset), d, d.eval_dataset)
        skipped += eval_skipped
    elif d.eval_size > 0:
        if d.eval_size >= len(table):
            raise ValueError(
                f"data.eval_size={d.eval_size} leaves no training items in {d.dataset} ({len(table)} items)"
            )
        order = np.random.default_rng(d.seed).permutation(len(table))
        eval_table = table.select(sorted(order[: d.eval_size]))
        train_table = table.select(sorted(order[d.eval_size :]))
    else:
        train_table, eval_table = table, None
    cropped = int(sum(f > d.max_audio_frames for f in train_table["frames"]))
    return Splits(
        train=CodesDataset(train_table, d, cfg.train.unconditional_frac, train=True),
        eval=None if eval_table is None else CodesDataset(eval_table, d, 0.0, train=False),
        cropped=cropped,
        skipped_long_text=skipped,
    )


def _filter_long_text(table: Dataset, cfg: DataConfig, where: str) -> tuple[Dataset, int]:
    """Apply data.long_text to transcripts longer than max_text_tokens; returns the table and the skip count."""
    lengths = [len(encode_text(t)) for t in table["text"]]
    too_long = [i for i, n in enumerate(lengths) if n > cfg.max_text_tokens]
    if not too_long:
        return table, 0
    if cfg.long_text == "error":
        shown = ", ".join(f"#{i} ({lengths[i]} tokens)" for i in too_long[:5])
        raise ValueError(
            f"{where}: {len(too_long)} transcript(s) exceed data.max_text_tokens={cfg.max_text_tokens}: {shown}. "
            "Raise data.max_text_tokens or set data.long_text=skip."
        )
    keep = sorted(set(range(len(table))) - set(too_long))
    return table.select(keep), len(too_long)
