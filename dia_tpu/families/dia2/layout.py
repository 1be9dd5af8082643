"""A Dia2 training example: the token grid the model reads, and its targets, from a recording's Mimi codes and
timed words.

The grid is what generation would have fed the model had it produced this recording after a voice prefix:

- **audio**: codebook c's frame f sits at grid position f + delay[c]; before its delay the position holds BOS
  (as generation feeds it), after the recording's end the audio pad id;
- **text**: the script machine (`dia_tpu.families.dia2.script`) runs in forced mode, as a voice prefix's warm-up
  runs it: a new word at each word's frame (upstream's prefix offset of 3 frames included), and the end where
  the last word's time runs out. Frame 0 reads BOS on the main stream and pad on the second; frame t + 1 reads
  what the machine wrote at t.

Targets, frame t predicting position t + 1: the action at t (the new words and the end), each codebook's token at
t + 1 where the recording has one. An action counts only where the model chooses it in generation (no rule
overrides it) and up to the end; the rest is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dia_tpu.families.dia2.config import Dia2Config
from dia_tpu.families.dia2.script import NEW_WORD_ACTION, PAD_ACTION, Entry, ScriptMachine, TextIds

PREFIX_OFFSET = 3  # frames between a word's start and its new-word action, as upstream's prefixes place it


@dataclass
class Example:
    """One item's grid and targets; T = frames + the largest delay - 1."""

    tokens: torch.Tensor  # [2 + N, T + 1] long
    actions: torch.Tensor  # [T] long: pad (0) or new word (1)
    action_mask: torch.Tensor  # [T] bool
    audio_mask: torch.Tensor  # [N, T] bool: codebook c has a token at position t + 1

    @property
    def steps(self) -> int:
        return self.actions.shape[0]


def make_example(
    cfg: Dia2Config, ids: TextIds, codes: torch.Tensor, entries: list[Entry], starts: list[int]
) -> Example:
    """codes [N, F] (Mimi, aligned), the words as entries and the frames their new-word actions fall on
    (`script.timed_entries`) -> the example."""
    codebooks, frames = codes.shape
    if codebooks != cfg.codebooks:
        raise ValueError(f"codes have {codebooks} codebooks; the model reads {cfg.codebooks}")
    length = frames + max(cfg.delays)  # grid positions 0..length-1
    steps = length - 1
    tokens = torch.full((cfg.channels, length), cfg.audio_pad, dtype=torch.long)
    positions = torch.arange(length)
    for c, delay in enumerate(cfg.delays):
        tokens[2 + c, delay : delay + frames] = codes[c]
        tokens[2 + c, :delay] = cfg.audio_bos
    audio_mask = torch.stack([(positions[1:] >= delay) & (positions[1:] < delay + frames) for delay in cfg.delays])
    forced = {start + PREFIX_OFFSET for start in starts}
    if entries:
        # The end: the frame after the last word's forced padding, as its new-word action would fall there.
        forced.add(starts[-1] + PREFIX_OFFSET + entries[-1].padding + 1)
    machine = ScriptMachine(ids, cfg.second_stream_ahead)
    # The text streams depend only on when new words fall; which actions are the model's own depends on the
    # padding generation forces (a word's token count, not the time until the next word as a prefix has it).
    state = machine.start([Entry(e.tokens, e.text, padding=len(e.tokens)) for e in entries])
    tokens[0, 0], tokens[1, 0] = ids.bos, ids.pad
    actions = torch.full((steps,), PAD_ACTION, dtype=torch.long)
    action_mask = torch.zeros(steps, dtype=torch.bool)
    for t in range(steps):
        ended = state.end_step is not None
        frame = machine.step(t, state, NEW_WORD_ACTION if t in forced else PAD_ACTION, forced=True)
        tokens[0, t + 1], tokens[1, t + 1] = frame.main, frame.second
        actions[t] = NEW_WORD_ACTION if frame.new_word else PAD_ACTION
        action_mask[t] = frame.free and not ended
    return Example(tokens, actions, action_mask, audio_mask)
