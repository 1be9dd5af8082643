"""An optional diarizer in place of clustering: pyannote.audio's speaker-diarization pipelines, by hub id
(`transcribe.diarizer: pyannote:pyannote/speaker-diarization-3.1`). Their models are gated: accept their terms
on the hub and give a token (HF_TOKEN, or `huggingface-cli login`). pyannote.audio is not a dependency of
dia_tpu: `pip install pyannote.audio`.

The pipeline decides who speaks when; `dia_tpu.transcribe.speakers.assign_from_turns` maps its turns onto the
voice-activity regions.
"""

from __future__ import annotations

import os

import numpy as np

from dia_tpu.errors import UserError
from dia_tpu.transcribe.regions import RATE

KINDS = ("none", "pyannote")


class Diarizer:
    def __init__(self, spec: str, device: str = "cpu"):
        kind, _, model = spec.partition(":")
        if kind != "pyannote" or not model:
            raise UserError(f"transcribe.diarizer: {spec!r} is not none or pyannote:<hub id or folder>")
        try:
            from pyannote.audio import Pipeline
        except ImportError as err:
            raise UserError(f"transcribe.diarizer={spec} needs pyannote.audio: pip install pyannote.audio") from err
        import torch

        from dia_tpu.hub import from_hub

        token = os.environ.get("HF_TOKEN")
        with from_hub("transcribe.diarizer", model, "a pyannote pipeline (gated: accept its terms, set HF_TOKEN)"):
            try:
                pipeline = Pipeline.from_pretrained(model, token=token)
            except TypeError:  # pyannote.audio 3.x names the token differently
                pipeline = Pipeline.from_pretrained(model, use_auth_token=token)
        if pipeline is None:  # 3.x returns None for a gated model it may not read
            raise UserError(
                f"transcribe.diarizer: {model} could not be loaded (gated: accept its terms on the "
                "hub and set HF_TOKEN)"
            )
        self.pipeline = pipeline.to(torch.device(device))
        self.torch = torch
        self.name = f"pyannote {model}"

    def turns(self, wave: np.ndarray, speakers: int = 0) -> list[tuple[float, float, str]]:
        """(start, end, label) of every speaker turn of a 16 kHz recording; `speakers` fixes their number."""
        audio = {"waveform": self.torch.from_numpy(wave[None].astype(np.float32)), "sample_rate": RATE}
        found = self.pipeline(audio, **({"num_speakers": speakers} if speakers else {}))
        annotation = getattr(found, "speaker_diarization", found)  # 4.x wraps the annotation
        return [
            (float(turn.start), float(turn.end), str(label))
            for turn, _, label in annotation.itertracks(yield_label=True)
        ]
