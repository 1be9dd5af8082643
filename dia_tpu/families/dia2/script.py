"""How Dia2's text lines up with its audio: the words of a script as entries, and the state machine that feeds
them to the two text streams, one token per frame.

Each frame the backbone's action head says pad (0) or new word (1). A new word takes the next entry: its tokens
are then fed on the main stream, one per frame, and with `second_stream_ahead` = k the second stream carries the
tokens of the k-th entry after it early (the new-word frame itself shows the word's first token on the main
stream and the new-word id on the second). The machine overrides the action where the rules say so: pad while a
word's tokens are still being fed or its forced padding lasts, new word once `max_padding` pads in a row are
spent. A new word with no entries left marks the end.

Generation samples the actions; a voice prefix and training force them at the frames its word timings give. Both
run the same machine, so training conditions the model exactly as generation and prefixes do.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dia_tpu.listen.asr import TimedWord

PAD_ACTION, NEW_WORD_ACTION = 0, 1
MAX_PADDING = 6  # pads in a row before a new word is forced
INITIAL_PADDING = 2  # forced pads before the first word, so its start is never cut
_BREAK = re.compile(r'<break\s+time="([0-9]+(?:.[0-9]*)?)s"\s*/?>|\s+')


@dataclass(frozen=True)
class TextIds:
    """The text ids the machine writes: from the config (pad, new word, zero) and the tokenizer (bos, speakers)."""

    pad: int
    new_word: int
    zero: int
    bos: int
    spk1: int
    spk2: int


@dataclass
class Entry:
    """One word to say (its tokens), or a pause (no tokens); `padding` frames of pad are forced after it starts."""

    tokens: list[int]
    text: str
    padding: int = 0


@dataclass(frozen=True)
class Frame:
    """What the machine did at a frame: the text ids the next frame reads, whether the frame was a new word
    (or the end), and whether the action was the model's to choose (no rule overrode it)."""

    main: int
    second: int
    new_word: bool
    free: bool


@dataclass
class ScriptState:
    """Where a script is: the entries left, the tokens being fed, the padding rules' counters."""

    entries: deque[Entry]
    padding_budget: int
    forced_padding: int
    pending: deque[int] = field(default_factory=deque)
    ahead: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    said: list[tuple[str, int]] = field(default_factory=list)  # each word and the frame it started


class ScriptMachine:
    def __init__(self, ids: TextIds, second_stream_ahead: int = 0, max_padding: int = MAX_PADDING):
        self.ids, self.lookahead, self.max_padding = ids, second_stream_ahead, max_padding

    def start(self, entries: Sequence[Entry], initial_padding: int = INITIAL_PADDING) -> ScriptState:
        return ScriptState(deque(entries), padding_budget=initial_padding, forced_padding=initial_padding)

    def step(self, frame: int, state: ScriptState, action: int, forced: bool = False) -> Frame:
        """Apply `action` (pad or new word) at `frame`. The rules override it while a word's tokens are being fed
        and, unless `forced`, while padding is forced or once the padding budget is spent."""
        ids = self.ids
        free = not state.pending and state.forced_padding == 0 and state.padding_budget > 0
        new_word = action == NEW_WORD_ACTION
        if state.pending:
            new_word = False
        elif not forced:
            if state.forced_padding > 0:
                new_word = False
            elif state.padding_budget <= 0:
                new_word = True
        if new_word:
            new_word = self._take_word(frame, state)
        if new_word:
            main = ids.new_word
        else:
            state.padding_budget = max(state.padding_budget - 1, 0)
            state.forced_padding = max(state.forced_padding - 1, 0)
            main = state.pending.popleft() if state.pending else ids.pad
        if not self.lookahead:
            return Frame(main, main, new_word, free)
        if main == ids.new_word:
            return Frame(state.pending.popleft() if state.pending else ids.pad, ids.new_word, new_word, free)
        return Frame(main, state.ahead.popleft() if state.ahead else ids.pad, new_word, free)

    def _take_word(self, frame: int, state: ScriptState) -> bool:
        """A new word at `frame`: take the next entry. Returns whether the frame stays a new word (False for a
        pause, which only forces its padding, and for the end without a second stream)."""
        if not state.entries:
            if state.end_step is None:
                state.end_step = frame
                return bool(self.lookahead)
            return False
        entry = state.entries.popleft()
        state.forced_padding = entry.padding
        if not entry.tokens:
            return False
        state.said.append((entry.text, frame))
        state.pending.extend(entry.tokens)
        if self.lookahead:
            state.ahead.extend(_upcoming(state.entries, self.lookahead))
        state.padding_budget = self.max_padding
        return True


def _upcoming(entries: deque[Entry], count: int) -> list[int]:
    """The tokens of the `count`-th entry with tokens among `entries` (a pause has none), or none."""
    for entry in entries:
        if entry.tokens:
            count -= 1
            if count == 0:
                return entry.tokens
    return []


Tokenize = Callable[[str], list[int]]


def script_entries(script: str, tokenize: Tokenize, ids: TextIds, frame_rate: float) -> list[Entry]:
    """A script's words as entries, as generation takes them: `[S1]`/`[S2]` go with the word after them, the
    first word always carries a speaker (S1 unless tagged), each word forces as many pads as its tokens, and
    `<break time="Xs"/>` becomes a pause of X seconds of frames."""
    entries: list[Entry] = []
    first, speaker = True, None
    text = script.replace("\u2019", "'").replace(":", " ")
    while text:
        match = _BREAK.search(text)
        segment, text = (text, "") if match is None else (text[: match.start()], text[match.end() :])
        for word in segment.split():
            if word in ("[S1]", "[S2]"):
                speaker = word
                continue
            tokens = tokenize(f"{speaker} {word}" if speaker else word)
            if first and (not tokens or tokens[0] != ids.spk1):
                tokens.insert(0, ids.spk1)
            first, speaker = False, None
            entries.append(Entry(tokens, word, padding=len(tokens)))
        if match and match.group(1) and (pause := round(float(match.group(1)) * frame_rate)) > 0:
            entries.append(Entry([], "", padding=pause))
    return entries


def timed_entries(
    words: Sequence[TimedWord], tokenize: Tokenize, speaker: str | None, frame_rate: float
) -> tuple[list[Entry], list[int]]:
    """A recording's timed words as entries and the frames their new-word actions fall on (before any offset),
    as upstream lines up a voice prefix: a word starts at its time's frame, never before the previous word's
    tokens are fed, and its padding lasts until the next word (the last: until its end)."""
    entries, starts, fed_until = [], [], 0
    for index, word in enumerate(words):
        tokens = tokenize(f"{speaker} {word.text}" if speaker and index == 0 else word.text)
        start = max(fed_until + 1, round(word.start * frame_rate))
        fed_until = start + len(tokens)
        following = words[index + 1].start if index + 1 < len(words) else word.end
        next_start = max(fed_until + 1, round(following * frame_rate))
        entries.append(Entry(tokens, word.text, padding=max(0, next_start - start - 1)))
        starts.append(start - 1)
    return entries, starts
