"""Dia2's training items and batches, from a prepared dataset whose rows hold Mimi codes and timed words.

A row's `codes` are the recording's Mimi codes, int16 [frames, codebooks] (undelayed, the model's codebooks), and
its `words` the words said, in order, each `{"word": str, "start": int, "end": int, "speaker": int}` with start and
end in codec frames (at the manifest's `frame_rate`) and the speaker 1 or 2 ([S1], [S2]). A word whose speaker
differs from the word before carries that speaker's tag, as a script's `[S2] word` does; the first word always
carries one.

Each item becomes the example `layout.make_example` lays out (the grid generation would have read, and its
targets); a recording longer than `data.max_audio_frames` is cut there, keeping the words that end before the cut
and counting no action after the last of them (the recording goes on with words its text no longer has).

With `data.prompt_pairs`, that share of training items (per epoch, seeded) is preceded by another recording of its
speaker (the `speaker` column) as a voice prefix, laid out as generation after that prefix reads it: the prefix's
codes and words, then the item's, its words' frames counted after the prefix. Only the item's frames carry loss
(generation forces a prefix's codes and actions); prefix and item share `data.max_audio_frames`, the item cut to
what the prefix leaves.
Batches pad every example to one fixed length (or a few, with `data.buckets`), so shapes never depend on the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from dia_tpu.config import Config, DataConfig
from dia_tpu.data.batching import bucket_lengths, bucket_of
from dia_tpu.data.dataset import PreparedItems, item_random, prompt_partners
from dia_tpu.errors import UserError
from dia_tpu.families.dia2.config import Dia2Config
from dia_tpu.families.dia2.layout import make_example
from dia_tpu.families.dia2.script import Entry, TextIds, Tokenize, timed_entries
from dia_tpu.listen.asr import TimedWord

WORDS_COLUMN = "words"
SPEAKER_TAGS = {1: "[S1]", 2: "[S2]"}


def tagged_words(words: Sequence[dict], frame_rate: float, offset: int = 0) -> list[TimedWord]:
    """A row's words as `TimedWord`s in seconds (`offset` frames later), with a speaker tag where the speaker
    changes (and on the first); the speakers were checked (`timing_problems`)."""
    said, speaker = [], None
    for word in words:
        tag = SPEAKER_TAGS[int(word["speaker"])]
        text = f"{tag} {word['word']}" if tag != speaker else str(word["word"])
        start, end = int(word["start"]) + offset, int(word["end"]) + offset
        said.append(TimedWord(text, start / frame_rate, end / frame_rate))
        speaker = tag
    return said


def timing_problems(words: Sequence[list], frames: Sequence[int], ids: Sequence[str]) -> list[str]:
    """Each recording whose words do not fit it, named with why: a speaker other than 1 or 2, an end before its
    start, a word starting before the one before it, a word outside the recording's frames."""
    problems = []
    for said, length, source in zip(words, frames, ids, strict=True):
        previous = 0
        for word in said:
            start, end, speaker = int(word["start"]), int(word["end"]), word["speaker"]
            why = (
                f"speaker {speaker!r} (1 or 2)"
                if speaker not in SPEAKER_TAGS
                else f"ends at frame {end} before it starts ({start})"
                if end < start
                else f"starts at frame {start}, before the word before it ({previous})"
                if start < previous
                else f"ends at frame {end}, after the recording's {int(length)} frames"
                if end > int(length) or start < 0
                else None
            )
            if why:
                problems.append(f"{source}: word {word['word']!r} {why}")
                break
            previous = start
    return problems


class Dia2Items(PreparedItems):
    """A prepared Dia2 dataset's rows as examples; the guidance dropout (`train.unconditional_frac`) is drawn per
    item from (seed, epoch, item), so every process and worker agrees."""

    def __init__(
        self,
        table: Dataset,
        cfg: DataConfig,
        model: Dia2Config,
        tokenize: Tokenize,
        ids: TextIds,
        frame_rate: float,
        unconditional_frac: float,
        *,
        train: bool,
    ):
        if WORDS_COLUMN not in table.column_names:
            raise UserError(
                f"{cfg.dataset}: its rows hold no word timings (a '{WORDS_COLUMN}' column): Dia2 trains on "
                "codes and timed words"
            )
        self.table = table.with_format("numpy", columns=["codes", "frames"])
        self.words = table[WORDS_COLUMN]
        names = table["source_id"] if "source_id" in table.column_names else [f"#{i}" for i in range(len(table))]
        if problems := timing_problems(self.words, self.table["frames"], names):
            shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            raise UserError(f"{cfg.dataset}: word timings that do not fit their recordings: {shown}")
        self.cfg, self.model, self.tokenize, self.ids, self.frame_rate = cfg, model, tokenize, ids, frame_rate
        self.unconditional_frac = unconditional_frac if train else 0.0
        self.epoch = 0
        self.partners = prompt_partners(table, cfg) if train and cfg.prompt_pairs > 0 else {}

    def __getitem__(self, index: int) -> dict:
        codes, words = self._codes(index)
        partner = self.partner(index)
        prefix, said = self._codes(partner) if partner is not None else (codes[:, :0], [])
        limit = self.cfg.max_audio_frames - prefix.shape[1]
        cut = codes.shape[1] > limit
        if cut:
            codes, words = codes[:, :limit], [w for w in words if int(w["end"]) <= limit]
        # The item's words after the prefix's frames.
        timed_words = tagged_words(said, self.frame_rate) + tagged_words(words, self.frame_rate, prefix.shape[1])
        timed, starts = timed_entries(timed_words, self.tokenize, None, self.frame_rate)
        example = make_example(self.model, self.ids, torch.cat([prefix, codes], dim=1), timed, starts)
        if cut and starts:
            # The recording goes on past the last kept word: neither its end nor the pads after it are taught.
            example.action_mask[starts[-1] + 4 :] = False
        if prefix.shape[1]:  # generation forces the prefix's codes and actions: nothing there is taught
            example.action_mask[: prefix.shape[1]] = False
            for c, delay in enumerate(self.model.delays):
                example.audio_mask[c, : prefix.shape[1] + delay - 1] = False
        dropped = item_random(self.cfg.seed, self.epoch, index, "cfg").random() < self.unconditional_frac
        return {**vars(example), "frames": prefix.shape[1] + codes.shape[1], "unconditional": dropped}

    def _codes(self, index: int) -> tuple[torch.Tensor, list]:
        """A row's codes [N, F] and words."""
        return torch.from_numpy(np.asarray(self.table[index]["codes"], dtype=np.int64)).T, self.words[index]


# The collator's tensors and their ranks, all batch-first: what sharded training splits along the batch.
BATCH_RANKS = {"tokens": 3, "actions": 2, "action_mask": 2, "audio_mask": 3, "unconditional": 1}


@dataclass
class Dia2Collator:
    """Stacks examples to [B, 2 + N, L + max(delay)] tokens (L: max_audio_frames, or the bucket that holds the
    batch's longest item), text streams padded with the text pad id, audio with the audio pad id, masks off."""

    model: Dia2Config
    max_audio_frames: int
    fill_to: int = 0  # complete short batches with copies of the first item whose targets all count nothing
    buckets: tuple[int, ...] = ()

    def __call__(self, items: list[dict]) -> dict:
        real = len(items)
        items = items + [items[0]] * (self.fill_to - real)
        cfg = self.model
        frames = bucket_of(max(item["frames"] for item in items), bucket_lengths(self.buckets, self.max_audio_frames))
        length = frames + max(cfg.delays)
        tokens = torch.full((len(items), cfg.channels, length), cfg.audio_pad, dtype=torch.long)
        tokens[:, :2] = cfg.text_pad
        actions = torch.zeros((len(items), length - 1), dtype=torch.long)
        action_mask = torch.zeros((len(items), length - 1), dtype=torch.bool)
        audio_mask = torch.zeros((len(items), cfg.codebooks, length - 1), dtype=torch.bool)
        for i, item in enumerate(items):
            size = item["tokens"].shape[1]
            tokens[i, :, :size] = item["tokens"]
            actions[i, : size - 1] = item["actions"]
            if i < real:
                action_mask[i, : size - 1] = item["action_mask"]
                audio_mask[i, :, : size - 1] = item["audio_mask"]
        unconditional = torch.tensor([bool(item["unconditional"]) for item in items])
        return {
            "tokens": tokens,
            "actions": actions,
            "action_mask": action_mask,
            "audio_mask": audio_mask,
            "unconditional": unconditional,
        }


def synthetic_batch(cfg: Config, model: Dia2Config) -> dict:
    """One collated batch of `train.batch_size` full-length recordings with random codes and a word of two
    random tokens every 6 frames (seeded): the shapes and the masks' share of a real batch, for `dia-tpu bench`."""
    generator = torch.Generator().manual_seed(cfg.data.seed)
    frames = cfg.data.max_audio_frames
    ids = TextIds(model.text_pad, model.text_new_word, model.text_zero, 1, model.text_new_word, model.text_new_word)
    first = max(ids.pad, ids.new_word, ids.zero) + 1  # word tokens above the special ids
    items = []
    for _ in range(cfg.train.batch_size):
        codes = torch.randint(0, model.audio_limit, (model.codebooks, frames), generator=generator)
        starts = list(range(2, max(frames - 8, 3), 6))
        words = [torch.randint(first, model.text_vocab, (2,), generator=generator).tolist() for _ in starts]
        entries = [Entry(tokens, "", padding=5) for tokens in words]
        example = make_example(model, ids, codes, entries, starts)
        items.append({**vars(example), "frames": frames, "unconditional": False})
    return Dia2Collator(model, frames)(items)
