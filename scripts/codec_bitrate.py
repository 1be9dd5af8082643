"""How intelligible a codec trained here stays as its bit rate falls: the demo codec's round trip of the bundled
sample decoded from its first k codebooks only (it was trained with quantizer dropout, so fewer codebooks decode
to a coarser version of the same speech), judged by the offline recogniser, beside the bit rates that Dia2's
codec (Mimi, 12.5 frames a second) runs at.

    python scripts/codec_bitrate.py --codec codecs/demo-dac --codebooks 1 2 3 5 9

Prints a markdown table: codebooks, bits a second, CER and WER of the decoded audio, log-mel distance.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from transformers import DacModel

from dia_tpu.config import PrepareConfig
from dia_tpu.data.audio import encode, load_audio
from dia_tpu.data.sources import read_clips
from dia_tpu.evaluation.judge import Judges, Prompt, Sums, judge
from dia_tpu.evaluation.spectra import mel_distance
from dia_tpu.listen.asr import load_recogniser

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def first(codec: DacModel, codes: np.ndarray, k: int) -> np.ndarray:
    """Codes [frames, codebooks] decoded from their first `k` codebooks alone."""
    audio = codec.decode(audio_codes=torch.from_numpy(codes[:, :k]).T[None]).audio_values
    return audio.reshape(-1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", type=Path, default=Path("codecs/demo-dac"), help="a DacModel folder")
    p.add_argument("--codebooks", type=int, nargs="+", default=[1, 2, 3, 5, 9])
    args = p.parse_args()
    torch.set_grad_enabled(False)
    codec = DacModel.from_pretrained(args.codec, dtype=torch.float32).eval()
    rate, config = codec.config.sampling_rate, codec.config
    frame_rate = rate / config.hop_length
    clips = [(clip.text, load_audio(clip.audio.path, rate)) for clip in read_clips(str(SAMPLE), PrepareConfig())]
    prompts = [Prompt(f"{i:04d}", text, reference=wave) for i, (text, wave) in enumerate(clips)]
    codes = [encode(codec, [wave])[0].astype(np.int64) for _, wave in clips]
    judges = Judges(recogniser=load_recogniser("pocketsphinx"))
    blank = [None] * len(clips)
    original = Sums.of(judge(prompts, [w for _, w in clips], blank, [True] * len(clips), rate, judges)).figures()
    print(f"originals: CER {original['cer']:.3f}, WER {original['wer']:.3f} ({len(clips)} clips)")
    print("| codebooks | bits a second | CER decoded | WER decoded | mel distance |")
    print("|---|---|---|---|---|")
    for k in args.codebooks:
        waves = [first(codec, c, k)[: len(w)] for c, (_, w) in zip(codes, clips, strict=True)]
        rows = judge(prompts, waves, blank, [True] * len(clips), rate, judges)
        figures = Sums.of(rows).figures()
        mel = np.mean([mel_distance(back, wave, rate) for back, (_, wave) in zip(waves, clips, strict=True)])
        bits = frame_rate * k * math.log2(config.codebook_size)
        print(f"| {k} | {bits:.0f} | {figures['cer']:.3f} | {figures['wer']:.3f} | {mel:.3f} |", flush=True)
    for books, size in ((8, 2048), (32, 2048)):
        print(f"Mimi at 12.5 frames/s, {books} codebooks of {size}: {12.5 * books * math.log2(size):.0f} bits a second")


if __name__ == "__main__":
    main()
