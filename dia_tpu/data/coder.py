"""What `prepare` turns each clip into, as a model family needs it: the codec's codes, and whatever else the
family's rows hold (Dia2's timed words). Prepare holds one `Coder` for a run; each family gives its own
(`Family.coder`), and `DacCoder` is Dia's: DAC codes and nothing else.

Prepare does the rest the same for every family: sources, decoding and resampling to `layout.sample_rate`,
splitting long clips at timed pauses, keys and the cache, work shards, batching equal lengths, the manifest.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np
import torch
from accelerate import PartialState

from dia_tpu.config import Config
from dia_tpu.data.audio import encode
from dia_tpu.data.clips import Segment
from dia_tpu.data.shards import CodesLayout, codes_layout
from dia_tpu.model.codec import build_codec, codec_on_accelerator, fuse_snake
from dia_tpu.precision import choose


class Coder(Protocol):
    # The codec, rates and channels; `layout.fingerprint` is part of every row's key.
    layout: CodesLayout
    # The columns its rows hold beyond prepare's own (name -> `datasets` feature); none for Dia.
    columns: dict
    # What the manifest records of it besides the codec (Dia2: the aligner that timed the words).
    described: dict
    # Whether a transcript must fit data.max_text_tokens (Dia's encoder reads it whole; Dia2 reads it word by
    # word as it speaks): the manifest counts those that do not.
    text_limit: bool

    def key(self, text: str, segments: list[Segment] | None) -> bytes:
        """What besides the audio decides a row's extra columns (Dia2: the transcript and its timings), hashed
        into its key: a row is reused only when this is unchanged."""

    def annotate(
        self,
        text: str,
        segments: list[Segment] | None,
        channels: list[np.ndarray] | None,
        seconds: float,
        language: str,
    ) -> dict:
        """The extra columns of a row of `seconds` of audio (`channels` at the codec's rate, or None for codes
        encoded elsewhere); raises ValueError with the reason prepare skips the clip for."""

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Equal-length mono waves at `layout.sample_rate`, encoded as one batch: int16 [frames, codebooks] each.
        Loads the codec on first use, so a run that encodes nothing never loads it."""


class DacCoder:
    """Dia's: the DAC codec of `model.codec` (or its seeded random architecture), on the process's accelerator,
    its Snake activations fused where torch compiles, at `prepare.mixed_precision`; rows of codes alone."""

    columns: dict = {}
    described: dict = {}
    text_limit = True

    def __init__(self, cfg: Config):
        self.cfg, self.layout, self.codec = cfg, codes_layout(cfg), None

    def key(self, text: str, segments: list[Segment] | None) -> bytes:
        return b""

    def annotate(self, text, segments, channels, seconds, language) -> dict:
        return {}

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        p = self.cfg.prepare
        if self.codec is None:
            state = PartialState()
            self.codec = codec_on_accelerator(build_codec(self.cfg.model), state.device)
            if p.compile and self.codec.device.type != "xla" and not fuse_snake(self.codec):
                print(
                    "prepare: torch cannot compile here (see torch.compile's requirements); the codec runs eagerly, "
                    "with the same codes"
                )
            choice = choose(p.mixed_precision, self.codec.device.type, "prepare.mixed_precision")
            if choice.slow and state.is_main_process:
                print(f"prepare: {choice.note}", flush=True)
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.mixed_precision)
        device = next(self.codec.parameters()).device
        autocast = torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext()
        with autocast:
            return encode(self.codec, waves, p.window_seconds)
