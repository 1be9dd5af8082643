"""From a prepared codes dataset to fixed-shape training batches.

Targets are built exactly as Dia sees them at inference: text as UTF-8 bytes with [S1]=1, [S2]=2 and
pad 0; audio as BOS, codes, EOS, then the delay pattern (BOS before, PAD after); labels are the delayed
sequence shifted by one with PAD and BOS ignored and EOS kept. An item with a voice prompt (data.prompt_pairs)
starts its codes with the prompt's, whose targets are ignored too. Unlike `DiaProcessor`, which left-pads
shorter clips, the collator pads on the right: the BOS row then always sits at position 0, as it does
when generating, and the causal decoder never lets a real position see the padding.

With `data.buckets` a batch is padded to the smallest bucket that holds its longest clip, and
`BucketBatchSampler` builds every batch from one bucket: still a few fixed shapes, far less padding.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from dia_tpu.config import Config, DataConfig
from dia_tpu.data.dataset import load_splits
from dia_tpu.data.tokens import TEXT_PAD, apply_delay, unconditional_text
from dia_tpu.errors import UserError

IGNORE_INDEX = -100


def bucket_lengths(buckets: Sequence[int], max_audio_frames: int) -> list[int]:
    """The audio lengths batches are padded to: the buckets, and max_audio_frames as the last one."""
    if any(b > max_audio_frames for b in buckets):
        raise UserError(f"buckets {list(buckets)} hold a length above max_audio_frames={max_audio_frames}")
    return sorted({*buckets, max_audio_frames})


def bucket_of(frames: int, lengths: Sequence[int]) -> int:
    """The smallest of the (sorted) `lengths` that holds `frames` codec frames."""
    for length in lengths:
        if frames <= length:
            return length
    raise UserError(f"{frames} audio frames exceed the longest padded length {lengths[-1]} (data.max_audio_frames)")


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
        # 0 on the rows of a voice prompt: they are given, as at generation, and carry no loss.
        scored = torch.ones((size, frames + 2, channels), dtype=torch.long)
        for i, item in enumerate(items):
            ids, codes = item["text_ids"], item["codes"]
            if len(ids) > self.max_text_tokens:
                raise UserError(f"text of {len(ids)} tokens exceeds data.max_text_tokens={self.max_text_tokens}")
            text[i, : len(ids)] = ids
            text_mask[i, : len(ids)] = 1
            if item["unconditional"]:
                text[i] = unconditional_text(text[i])
            audio[i, 1 : 1 + len(codes)] = codes
            scored[i, 1 : 1 + item.get("prompt_frames", 0)] = 0
            # A clip cut at the frame limit does not end there, so it must not teach the model to stop.
            audio[i, 1 + len(codes)] = self.pad if item["cropped"] else self.eos
        delayed = apply_delay(audio, self.delay_pattern, self.bos, self.pad)
        labels = delayed[:, 1:].clone()
        labels[(labels == self.pad) | (labels == self.bos)] = IGNORE_INDEX
        labels[apply_delay(scored, self.delay_pattern, 1, 1)[:, 1:] == 0] = IGNORE_INDEX
        labels[real:] = IGNORE_INDEX
        return {
            "input_ids": text,
            "attention_mask": text_mask,
            "decoder_input_ids": delayed[:, :-1],
            "labels": labels,
        }


# The collator's tensors and their ranks, all batch-first: what sharded training splits along the batch.
BATCH_RANKS = {"input_ids": 2, "attention_mask": 2, "decoder_input_ids": 3, "labels": 3}


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

    def __init__(
        self, frames: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int, num_processes: int = 1
    ):
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


# Text tokens left unused at the end of the padded text, so the text mask is exercised as in real batches.
_TEXT_SLACK = 10


def synthetic_batch(cfg: Config, model_config) -> dict:
    """One collated batch of `train.batch_size` full-length clips with random codes and text (seeded)."""
    d, dec = cfg.data, model_config.decoder_config
    generator = torch.Generator().manual_seed(d.seed)
    channels = len(model_config.delay_pattern)
    code_limit = min(dec.bos_token_id, dec.eos_token_id, dec.pad_token_id)  # codec codes lie below the specials
    text_len = max(1, d.max_text_tokens - _TEXT_SLACK)
    # Byte ids from 3 on: 0 is text padding, 1 and 2 are the speaker tags.
    text_vocab = model_config.encoder_config.vocab_size
    items = [
        {
            "text_ids": torch.randint(3, text_vocab, (text_len,), generator=generator),
            "codes": torch.randint(0, code_limit, (d.max_audio_frames, channels), generator=generator),
            "cropped": False,
            "unconditional": False,
        }
        for _ in range(cfg.train.batch_size)
    ]
    return make_collator(d, model_config)(items)
