"""What `dia-tpu prepare` makes of each clip for Dia2 (`dia_tpu.data.coder`): the Mimi codes of its audio, the
model's codebooks of the model's own Mimi (`assets.mimi`, `kyutai/mimi` by default), and its words timed in
frames (`timings`), which a row holds as `words`.

A clip's words are timed from the source where it gives them word by word (moshi-finetune's `alignments` JSON
beside the audio, or a segments column of one word each), else by `prepare.aligner` on the audio against the
transcript. A clip whose words cannot all be timed, or whose word is split into more tokens than there are
frames before the next word (generation would feed them late, so the text would run behind the audio), is
skipped with that reason.

Mimi is encoded whole, clips of equal length batched. Windows would not pay: its encoder's eight transformer
layers each look back 250 steps (10 s), so a window needs 80 s of the audio before it for the codes the whole
clip gives, longer than the clips training takes.
"""

from __future__ import annotations

import json

import numpy as np
from accelerate import PartialState
from datasets import List, Value
from transformers import MimiConfig

from dia_tpu.config import Config
from dia_tpu.data.clips import Segment
from dia_tpu.data.shards import CodesLayout, hash_bytes
from dia_tpu.families.dia2.assets import load_mimi, load_tokenizer, mimi_source
from dia_tpu.families.dia2.config import read_config
from dia_tpu.families.dia2.data import WORDS_COLUMN, tagged_words
from dia_tpu.families.dia2.prefix import encode
from dia_tpu.families.dia2.script import timed_entries
from dia_tpu.families.dia2.source import source_folder
from dia_tpu.families.dia2.timings import Untimed, aligned, from_segments, in_frames
from dia_tpu.hub import from_hub
from dia_tpu.listen.align import Aligner, load_aligner

# How far behind its audio a word's tokens may be fed before a clip is skipped, in frames.
MAX_LATE_FRAMES = 2
WORD = {"word": Value("string"), "start": Value("int32"), "end": Value("int32"), "speaker": Value("int8")}


class Dia2Coder:
    def __init__(self, cfg: Config):
        self.folder = source_folder(cfg.model.pretrained)
        self.config = read_config(self.folder / "config.json")
        self.codec_source = mimi_source(self.folder, self.config)
        with from_hub("Dia2's codec (assets.mimi)", self.codec_source):
            mimi = MimiConfig.from_pretrained(self.codec_source)
        self.rate, self.frame_rate = mimi.sampling_rate, mimi.frame_rate
        tokenizer = load_tokenizer(self.folder, self.config)
        self.tokenize = lambda words: tokenizer.encode(words, add_special_tokens=False)
        self.spec, self.aligners = cfg.prepare.aligner, {}
        # Loaded now for English, so a missing espeak-ng stops the run before anything is encoded.
        self.described = {"aligner": self._aligner("en").name if self.spec != "none" else None}
        identity = {"codec": self.codec_source, "codebooks": self.config.codebooks}
        fingerprint = json.dumps([identity, self.described, cfg.prepare.mixed_precision], sort_keys=True)
        hop, codebooks = round(self.rate / self.frame_rate), self.config.codebooks
        self.layout = CodesLayout(identity, hash_bytes(fingerprint.encode()), self.rate, hop, codebooks, False)
        self.columns = {WORDS_COLUMN: List(WORD)}
        self.text_limit = False
        self.codec = None

    def key(self, text: str, segments: list[Segment] | None) -> bytes:
        return json.dumps([text, [vars(s) for s in segments or ()]]).encode()

    def annotate(self, text, segments, channels, seconds, language) -> dict:
        if segments and all(len(s.text.split()) <= 1 for s in segments):
            said = from_segments(segments)
        elif channels is None:
            raise Untimed("codes encoded elsewhere come without audio to align: give their word timings")
        elif self.spec == "none":
            raise Untimed("no word timings, and prepare.aligner is none")
        else:
            aligner = self._aligner(language or "en")
            said = aligned(text, lambda words: aligner.align(channels[0], self.rate, words))
        words = in_frames(said, seconds, self.frame_rate)
        entries, starts = timed_entries(tagged_words(words, self.frame_rate), self.tokenize, None, self.frame_rate)
        for k in range(1, len(words)):
            # One token a frame, and a frame for the new word: a word whose tokens outrun the frames before the
            # next delays it, and delays add up. Upstream lines prefixes up the same way, however late; a clip is
            # kept up to two frames (160 ms) late.
            late, before = starts[k] + 1 - words[k]["start"], words[k - 1]
            if late > MAX_LATE_FRAMES:
                raise Untimed(
                    f"too many tokens for the frames: {words[k]['word']!r} would be fed {late} frames late "
                    f"({before['word']!r} before it takes {len(entries[k - 1].tokens)} tokens in "
                    f"{words[k]['start'] - before['start']})"
                )
        return {WORDS_COLUMN: words}

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if self.codec is None:
            self.codec = load_mimi(self.folder, self.config, PartialState().device)
        codes = encode(self.codec, np.stack(waves), self.config.codebooks)
        return [c.T.numpy().astype(np.int16) for c in codes]

    def _aligner(self, language: str) -> Aligner:
        if language not in self.aligners:
            self.aligners[language] = load_aligner(self.spec, language)
        return self.aligners[language]
