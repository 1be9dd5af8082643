"""Judge a demo codec (the demo DAC, or a Mimi from train_demo_mimi.py): encode -> decode held-out espeak-ng
sentences (voices and texts the codec never heard) and the bundled sample, then compare the offline
recogniser's errors on the originals and on the reconstructions, and the log-mel distance.

    python scripts/eval_demo_codec.py --codec codecs/demo-dac --recipe runs/demo-codec/recipe.json

Writes `roundtrip.json` (summaries, and every utterance's judged rows for originals and reconstructions)
and, for listening, the first few originals and reconstructions as wavs under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from speech_corpus import RATE, bundled_sentences, held_out_utterances
from transformers import DacModel, MimiModel

from dia_tpu.config import PrepareConfig
from dia_tpu.data.audio import load_audio
from dia_tpu.data.sources import read_clips
from dia_tpu.evaluation.roundtrip import measure_round_trips
from dia_tpu.listen.asr import load_recogniser

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", type=Path, default=Path("codecs/demo-dac"), help="a DacModel or MimiModel folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="a training checkpoint folder instead of --codec")
    p.add_argument("--mimi", action="store_true", help="the checkpoint is train_demo_mimi.py's")
    p.add_argument(
        "--recipe",
        type=Path,
        default=Path("runs/demo-codec/recipe.json"),
        help="the training recipe, whose sentences the held-out set avoids",
    )
    p.add_argument("--held-out", type=int, default=40, help="held-out sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--listen", type=int, default=4, help="wav pairs of each set written for listening")
    p.add_argument("--out", type=Path, default=Path("runs/demo-codec/eval"))
    return p.parse_args()


def load_codec(args: argparse.Namespace) -> DacModel | MimiModel:
    if args.checkpoint is None:
        kind = json.loads((args.codec / "config.json").read_text()).get("model_type")
        return (MimiModel if kind == "mimi" else DacModel).from_pretrained(args.codec, dtype=torch.float32).eval()
    if args.mimi:
        from train_demo_mimi import ARCHITECTURE
        from transformers import MimiConfig

        codec = MimiModel(MimiConfig(**ARCHITECTURE))
    else:
        from train_demo_codec import ARCHITECTURE
        from transformers import DacConfig

        codec = DacModel(DacConfig(**ARCHITECTURE))
    codec.load_state_dict(torch.load(args.checkpoint / "state.pt", weights_only=True)["model"])
    return codec.eval()


def bundled(rate: int) -> list[tuple[str, np.ndarray]]:
    """The bundled sample's clips as prepare reads them."""
    return [(clip.text, load_audio(clip.audio.path, rate)) for clip in read_clips(str(SAMPLE), PrepareConfig())]


def main() -> None:
    args = parse()
    torch.set_grad_enabled(False)
    codec = load_codec(args)
    trained = {s for p in json.loads(args.recipe.read_text())["passages"] for s in p["sentences"]}
    rate = codec.config.sampling_rate
    held_out = [
        (text, soxr.resample(wave, RATE, rate).astype(np.float32))
        for text, _, wave in held_out_utterances(args.seed, args.held_out, trained | bundled_sentences())
    ]
    sets = {"held_out": held_out, "bundled_sample": bundled(rate)}
    recogniser = load_recogniser("pocketsphinx")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"recogniser": recogniser.name, "codec": str(args.checkpoint or args.codec)}
    for name, items in sets.items():
        began = time.perf_counter()
        judged = measure_round_trips(codec, items, recogniser)
        results[name] = {
            **judged.summary(),
            "seconds": round(time.perf_counter() - began, 1),
            "original": [row.to_dict() for row in judged.original],
            "decoded": [row.to_dict() for row in judged.decoded],
        }
        print(name, json.dumps(judged.summary()), flush=True)
        for i, ((_, wave), back) in enumerate(zip(items[: args.listen], judged.waves, strict=False)):
            sf.write(args.out / f"{name}_{i}_original.wav", wave, rate)
            sf.write(args.out / f"{name}_{i}_decoded.wav", back, rate)
    (args.out / "roundtrip.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
