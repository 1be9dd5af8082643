"""From a prepared codes dataset to fixed-shape training batches.

Targets are built exactly as Dia sees them at inference: text as UTF-8 bytes with [S1]=1, [S2]=2 and
pad 0; audio as BOS, codes, EOS, then the delay pattern (BOS before, PAD after); labels are the delayed
sequence shifted by one with PAD and BOS ignored and EOS kept. Unlike `DiaProcessor`, which left-pads
shorter clips, the collator pads on the right: the BOS row then always sits at position 0, as it does
when generating, and the causal decoder never lets a real position see the padding.

With `data.buckets` a batch is padded to the smallest bucket that holds its longest clip, and
`BucketBatchSampler` builds every batch from one bucket: still a few fixed shapes, far less padding.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from dia_tpu.audio import apply_delay
from dia_tpu.config import Config, DataConfig

IGNORE_INDEX = -100
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


def item_random(seed: int, epoch: int, index: int, purpose: str) -> random.Random:
    """A generator that depends only on (seed, epoch, item, purpose): every process and worker agrees."""
    return random.Random(f"{seed}:{epoch}:{index}:{purpose}")


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


def bucket_lengths(buckets: Sequence[int], max_audio_frames: int) -> list[int]:
    """The audio lengths batches are padded to: the buckets, and max_audio_frames as the last one."""
    if any(b > max_audio_frames for b in buckets):
        raise ValueError(f"buckets {list(buckets)} hold a length above max_audio_frames={max_audio_frames}")
    return sorted({*buckets, max_audio_frames})


def bucket_of(frames: int, lengths: Sequence[int]) -> int:
    """The smallest of the (sorted) `lengths` that holds `frames` codec frames."""
    for length in lengths:
        if frames <= length:
            return length
    raise ValueError(f"{frames} audio frames exceed the longest padded length {lengths[-1]} (data.max_audio_frames)")


class CodesDataset(torch.utils.data.Dataset):
    """Items of a prepared dataset, with the per-item random decisions (crop window, CFG text dropout, tags)."""

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

    def frames(self) -> list[int]:
        """Each item's audio length after cropping to max_audio_frames, without reading the codes."""
        return [min(int(n), self.cfg.max_audio_frames) for n in self.table["frames"]]

    def __getitem__(self, index: int) -> dict:
        row = self.table[index]
        codes = torch.from_numpy(np.asarray(row["codes"], dtype=np.int64))
        limit, start = self.cfg.max_audio_frames, 0
        cropped = codes.shape[0] > limit
        if cropped and self.cfg.random_crop and self.train:
            start = item_random(self.cfg.seed, self.epoch, index, "crop").randrange(codes.shape[0] - limit + 1)
        dropped = item_random(self.cfg.seed, self.epoch, index, "cfg").random() < self.unconditional_frac
        text = str(row["text"])
        if self.train and tags_augmented(self.cfg):
            text = augment_tags(text, item_random(self.cfg.seed, self.epoch, index, "tags"), self.cfg)
        return {
            "text_ids": torch.tensor(encode_text(text, self.cfg.language_tags), dtype=torch.long),
            "codes": codes[start : start + limit],
            "cropped": cropped,
            "unconditional": dropped,
        }


@dataclass
class Collator:
    """Stacks items into one of a few fixed shapes: text [B, max_text_tokens], audio [B, L + 1 + max(delay), C]
    where L is max_audio_frames, or with `buckets` the smallest bucket that holds the batch's longest clip."""

    max_text_tokens: int
    max_audio_frames: int
    delay_pattern: list[int]
    bos: int
    eos: int
    pad: int
    # Complete short batches to this size with copies of their first item whose targets are all ignored,
    # so even the last evaluation batch has the common shape and adds nothing to the sums.
    fill_to: int = 0
    # Audio lengths (codec frames) below max_audio_frames to pad to; empty pads every batch to max_audio_frames.
    buckets: tuple[int, ...] = ()

    def __call__(self, items: list[dict]) -> dict:
        real = len(items)
        items = items + [items[0]] * (self.fill_to - real)
        size = len(items)
        channels = len(self.delay_pattern)
        lengths = bucket_lengths(self.buckets, self.max_audio_frames)
        frames = bucket_of(max(len(item["codes"]) for item in items), lengths)
        text = torch.full((size, self.max_text_tokens), TEXT_PAD, dtype=torch.long)
        text_mask = torch.zeros((size, self.max_text_tokens), dtype=torch.long)
        # BOS row, up to `frames` code rows, one EOS row (PAD when the clip was cut), PAD rows after.
        audio = torch.full((size, frames + 2, channels), self.pad, dtype=torch.long)
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


def make_collator(cfg: DataConfig, model_config, fill_to: int = 0, *, bucketed: bool = False) -> Collator:
    """The collator for `cfg`; `bucketed` pads to data.buckets (training), otherwise to max_audio_frames."""
    dec = model_config.decoder_config
    return Collator(
        max_text_tokens=cfg.max_text_tokens,
        max_audio_frames=cfg.max_audio_frames,
        delay_pattern=list(model_config.delay_pattern),
        bos=dec.bos_token_id,
        eos=dec.eos_token_id,
        pad=dec.pad_token_id,
        fill_to=fill_to,
        buckets=tuple(cfg.buckets) if bucketed else (),
    )


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches drawn from one length bucket each, in a seeded order per epoch.

    Per epoch: shuffle each bucket's items, cut them into full batches (a bucket's remainder sits the
    epoch out, like drop_last), shuffle the batches. Batches come in runs of `num_processes` from one
    bucket: Accelerate deals batch i to process i % num_processes, so all processes of a step run the
    same shape and none waits at the gradient all-reduce for a longer one. The order depends only on
    (seed, epoch), so every process computes the same one and a resume can skip into it.
    """

    def __init__(self, frames: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int,
                 num_processes: int = 1):
        self.batch_size = batch_size
        # Read by Accelerate's BatchSamplerShard: never repeat batches to even out the processes.
        self.drop_last = True
        self.num_processes = num_processes
        self.seed = seed
        self.epoch = 0
        self.members: dict[int, list[int]] = {length: [] for length in lengths}
        for index, n in enumerate(frames):
            self.members[bucket_of(n, lengths)].append(index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        run = self.batch_size * self.num_processes
        return sum(len(items) // run for items in self.members.values()) * self.num_processes

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}:batches")
        run, size = self.batch_size * self.num_processes, self.batch_size
        runs = []
        for items in self.members.values():
            items = items.copy()
            rng.shuffle(items)
            runs += [items[start : start + run] for start in range(0, len(items) - run + 1, run)]
        rng.shuffle(runs)
        for items in runs:
            yield from (items[start : start + size] for start in range(0, run, size))


def padding_report(cfg: Config) -> dict:
    """How much of one training epoch's audio is padding, padded to max_audio_frames and to data.buckets.

    Counts codec frames of the batches one process sees in epoch 0 (BOS, EOS and delay rows left out):
    padding = padded frames / all frames. Both orders come from `BucketBatchSampler` with data.seed, the
    unbucketed one with max_audio_frames as its only bucket (a shuffle with drop_last).
    """
    d, batch_size = cfg.data, cfg.train.batch_size
    frames = load_splits(cfg).train.frames()
    report = {"items": len(frames), "batch_size": batch_size}
    for name, buckets in (("without_buckets", []), ("with_buckets", d.buckets)):
        lengths = bucket_lengths(buckets, d.max_audio_frames)
        real = total = used = 0
        batches = list(BucketBatchSampler(frames, lengths, batch_size, d.seed))
        for batch in batches:
            clips = [frames[i] for i in batch]
            real += sum(clips)
            total += len(clips) * bucket_of(max(clips), lengths)
            used += len(clips)
        report[name] = {
            "lengths": lengths,
            "batches": len(batches),
            "items_used": used,
            "padding": (total - real) / total if total else 0.0,
        }
    return report


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


def _text_tokens(text: str, cfg: DataConfig) -> int:
    """The most byte tokens `text` can take in training or evaluation. Tag augmentation rejoins tags with
    ", ", which can lengthen a prompt written "a,b"; its longest outcome keeps the tag_limit longest tags."""
    tokens = len(encode_text(text, cfg.language_tags))
    if tags_augmented(cfg):
        tags = sorted(split_tags(text), key=lambda tag: len(encode_text(tag, cfg.language_tags)), reverse=True)
        tokens = max(tokens, len(encode_text(", ".join(tags[: cfg.tag_limit or None]), cfg.language_tags)))
    return tokens


def _filter_long_text(table: Dataset, cfg: DataConfig, where: str) -> tuple[Dataset, int]:
    """Apply data.long_text to transcripts longer than max_text_tokens; returns the table and the skip count."""
    lengths = [_text_tokens(t, cfg) for t in table["text"]]
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
