"""A prepared codes dataset as training and evaluation items: the held-out split, the long-text policy, and
the per-item random decisions (crop window, text dropout for guidance, music-tag augmentation), each seeded
by (seed, epoch, item) so every process and worker agrees."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from dia_tpu.config import Config, DataConfig
from dia_tpu.data.tokens import augment_tags, encode_text, split_tags, tags_augmented
from dia_tpu.errors import UserError


def item_random(seed: int, epoch: int, index: int, purpose: str) -> random.Random:
    """A generator that depends only on (seed, epoch, item, purpose): every process and worker agrees."""
    return random.Random(f"{seed}:{epoch}:{index}:{purpose}")


class PreparedItems(torch.utils.data.Dataset):
    """A prepared dataset's rows as items of one family's kind: what every family's items share (the table, the
    data config, the epoch the per-item random decisions are drawn for, each item's length)."""

    table: Dataset  # formatted to the columns the items read
    cfg: DataConfig
    epoch: int = 0
    partners: dict[int, list[int]] = {}  # with data.prompt_pairs: each item's speaker's clips short enough to prompt it

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def frames(self) -> list[int]:
        """Each item's audio length after cropping to max_audio_frames, without reading the codes."""
        return [min(int(n), self.cfg.max_audio_frames) for n in self.table["frames"]]

    def partner(self, index: int) -> int | None:
        """The item whose clip prompts item `index` this epoch (`data.prompt_pairs` of the items, seeded; another
        clip of its speaker), or None."""
        group = self.partners.get(index, [])
        rng = item_random(self.cfg.seed, self.epoch, index, "prompt")
        if len(group) - (index in group) == 0 or rng.random() >= self.cfg.prompt_pairs:
            return None
        # One draw from the speaker's short clips, stepping past the item itself: no list built per item.
        k = rng.randrange(len(group))
        return group[(k + 1) % len(group)] if group[k] == index else group[k]


class CodesDataset(PreparedItems):
    """Dia's items of a prepared dataset, with the per-item random decisions (crop window, CFG text dropout,
    tags)."""

    def __init__(self, table: Dataset, cfg: DataConfig, unconditional_frac: float, *, train: bool):
        self.table = table.with_format("numpy", columns=["text", "codes", "frames"])
        self.cfg = cfg
        self.unconditional_frac = unconditional_frac if train else 0.0
        self.train = train
        self.epoch = 0
        self.partners = prompt_partners(table, cfg) if train and cfg.prompt_pairs > 0 else {}

    def __getitem__(self, index: int) -> dict:
        row = self.table[index]
        codes = torch.from_numpy(np.asarray(row["codes"], dtype=np.int64))
        text = str(row["text"])
        if self.train and tags_augmented(self.cfg):
            text = augment_tags(text, item_random(self.cfg.seed, self.epoch, index, "tags"), self.cfg)
        prompt_codes, text = self._prompt(index, text, codes.shape[1])
        limit, start = self.cfg.max_audio_frames - len(prompt_codes), 0
        cropped = codes.shape[0] > limit
        if cropped and self.cfg.random_crop and self.train:
            start = item_random(self.cfg.seed, self.epoch, index, "crop").randrange(codes.shape[0] - limit + 1)
        dropped = item_random(self.cfg.seed, self.epoch, index, "cfg").random() < self.unconditional_frac
        return {
            "text_ids": torch.tensor(encode_text(text, self.cfg.language_tags), dtype=torch.long),
            "codes": torch.cat([prompt_codes, codes[start : start + limit]]),
            "prompt_frames": len(prompt_codes),
            "cropped": cropped,
            "unconditional": dropped,
        }

    def _prompt(self, index: int, text: str, channels: int) -> tuple[torch.Tensor, str]:
        """The voice prompt this item gets this epoch (codes [P, C], P = 0 for none) and the text then read."""
        none = torch.zeros((0, channels), dtype=torch.long)
        if (partner := self.partner(index)) is None:
            return none, text
        row = self.table[partner]
        script = prompted_text(str(row["text"]), text)
        if text_tokens(script, self.cfg) > self.cfg.max_text_tokens:
            return none, text
        return torch.from_numpy(np.asarray(row["codes"], dtype=np.int64)), script


def prompted_text(transcript: str, text: str) -> str:
    """What the text encoder reads for `text` after a voice prompt saying `transcript`, as generation builds it."""
    return " ".join(part for part in (transcript.strip(), text.strip()) if part)


def prompt_limit(cfg: DataConfig) -> int:
    """The longest clip (codec frames) that may serve as a voice prompt."""
    return cfg.prompt_max_frames or cfg.max_audio_frames // 2


def prompt_partners(table: Dataset, cfg: DataConfig) -> dict[int, list[int]]:
    """For each item with a speaker, the items of the same speaker short enough to prompt it (itself included;
    the caller leaves it out)."""
    limit = prompt_limit(cfg)
    by_speaker: dict[str, list[int]] = {}
    for i, (speaker, frames) in enumerate(zip(table["speaker"], table["frames"], strict=True)):
        if speaker and frames <= limit:
            by_speaker.setdefault(speaker, []).append(i)
    return {i: by_speaker.get(speaker, []) for i, speaker in enumerate(table["speaker"]) if speaker}


@dataclass
class Splits:
    train: CodesDataset
    eval: CodesDataset | None
    cropped: int  # training items longer than max_audio_frames
    skipped_long_text: int  # items dropped because their text exceeds max_text_tokens


# A table's rows as training items: (table, train) -> dataset. Dia's are `CodesDataset`s.
MakeItems = Callable[[Dataset, bool], torch.utils.data.Dataset]


def load_splits(cfg: Config, make_items: MakeItems | None = None, byte_text: bool = True) -> Splits:
    """Load the prepared dataset(s), hold out the eval split, apply the long-text policy (to `byte_text`,
    Dia's text, only) and make each table's items (default: Dia's)."""
    d = cfg.data
    train_table, eval_table, skipped = split_tables(cfg, byte_text)
    if make_items is None:
        frac = cfg.train.unconditional_frac
        make_items = lambda table, train: CodesDataset(table, d, frac if train else 0.0, train=train)  # noqa: E731
    cropped = int(sum(f > d.max_audio_frames for f in train_table["frames"]))
    return Splits(
        train=make_items(train_table, True),
        eval=None if eval_table is None else make_items(eval_table, False),
        cropped=cropped,
        skipped_long_text=skipped,
    )


def split_tables(cfg: Config, byte_text: bool = True) -> tuple[Dataset, Dataset | None, int]:
    """The training and held-out tables as training makes them (the long-text policy applied to byte text,
    then data.eval_size items drawn with data.seed, every item of data.eval_speakers, or data.eval_dataset), and
    how many items were skipped."""
    d = cfg.data

    def read(path: str) -> tuple[Dataset, int]:
        table = load_from_disk(path)
        return _filter_long_text(table, d, path) if byte_text else (table, 0)

    table, skipped = read(d.dataset)
    if d.eval_dataset is not None:
        eval_table, eval_skipped = read(d.eval_dataset)
        return table, eval_table, skipped + eval_skipped
    if d.eval_speakers:
        return (*_speakers_held_out(table, d), skipped)
    if d.eval_size == 0:
        return table, None, skipped
    if d.eval_size >= len(table):
        raise UserError(f"data.eval_size={d.eval_size} leaves no training items in {d.dataset} ({len(table)} items)")
    order = np.random.default_rng(d.seed).permutation(len(table))
    return table.select(sorted(order[d.eval_size :])), table.select(sorted(order[: d.eval_size])), skipped


def _speakers_held_out(table: Dataset, d: DataConfig) -> tuple[Dataset, Dataset]:
    """(training, held-out) with every item of the data.eval_speakers in the held-out table."""
    speakers = table["speaker"]
    missing = sorted(set(d.eval_speakers) - set(speakers))
    if missing:
        known = ", ".join(sorted(set(speakers))[:10])
        raise UserError(f"data.eval_speakers: {missing} not among the speakers of {d.dataset} ({known})")
    held = set(d.eval_speakers)
    kept = [i for i, s in enumerate(speakers) if s not in held]
    if not kept:
        raise UserError(f"data.eval_speakers: holding out {sorted(held)} leaves no training items in {d.dataset}")
    return table.select(kept), table.select([i for i, s in enumerate(speakers) if s in held])


def text_tokens(text: str, cfg: DataConfig) -> int:
    """The most byte tokens `text` can take in training or evaluation. Tag augmentation rejoins tags with
    ", ", which can lengthen a prompt written "a,b"; its longest outcome keeps the tag_limit longest tags."""
    tokens = len(encode_text(text, cfg.language_tags))
    if tags_augmented(cfg):
        tags = sorted(split_tags(text), key=lambda tag: len(encode_text(tag, cfg.language_tags)), reverse=True)
        tokens = max(tokens, len(encode_text(", ".join(tags[: cfg.tag_limit or None]), cfg.language_tags)))
    return tokens


def _filter_long_text(table: Dataset, cfg: DataConfig, where: str) -> tuple[Dataset, int]:
    """Apply data.long_text to transcripts longer than max_text_tokens; returns the table and the skip count."""
    lengths = [text_tokens(t, cfg) for t in table["text"]]
    too_long = [i for i, n in enumerate(lengths) if n > cfg.max_text_tokens]
    if not too_long:
        return table, 0
    if cfg.long_text == "error":
        shown = ", ".join(f"#{i} ({lengths[i]} tokens)" for i in too_long[:5])
        raise UserError(
            f"{where}: {len(too_long)} transcript(s) exceed data.max_text_tokens={cfg.max_text_tokens}: {shown}. "
            "Raise data.max_text_tokens or set data.long_text=skip."
        )
    keep = sorted(set(range(len(table))) - set(too_long))
    return table.select(keep), len(too_long)
