"""The listening models a command uses, loaded by the names its flags and config give them."""

from __future__ import annotations

from dataclasses import dataclass

from dia_tpu.listen.asr import Recogniser, load_recogniser
from dia_tpu.listen.quality import QualityJudge, load_quality_judge
from dia_tpu.listen.speaker import SpeakerEncoder, load_speaker_encoder


@dataclass
class Judges:
    """The listening models: any may be absent in an evaluation (that column is then left out); transcribe
    needs the recogniser and the speaker encoder."""

    recogniser: Recogniser | None = None
    speaker: SpeakerEncoder | None = None
    quality: QualityJudge | None = None

    @classmethod
    def load(cls, asr: str, speaker: str, quality: str, device="cpu", language: str | None = "en") -> Judges:
        """The judges named as `dia-tpu evaluate`'s flags and eval.audio name them ("none": absent); each
        backend's package is imported only when it is named."""
        return cls(
            None if asr == "none" else load_recogniser(asr, device, language=language),
            None if speaker == "none" else load_speaker_encoder(speaker, device),
            None if quality == "none" else load_quality_judge(quality, device),
        )

    def names(self) -> dict[str, str]:
        found = {"recogniser": self.recogniser, "speaker": self.speaker, "quality": self.quality}
        return {role: judge.name for role, judge in found.items() if judge is not None}
