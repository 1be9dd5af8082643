"""Train the demo codec: a small transformers `DacModel` of the real codec's interface (44.1 kHz, hop 512,
9 codebooks of 1024) on espeak-ng speech made by speech_corpus.py, then export it for
`DacModel.from_pretrained`.

    python scripts/train_demo_codec.py --work runs/demo-codec --out codecs/demo-dac

The run folder keeps a checkpoint (a re-run with the same folder resumes it exactly), `log.jsonl`
(one row per logged step: losses, learning rate, elapsed time) and `recipe.json` (seed, corpus,
model and optimiser settings). Losses: multi-scale log-mel L1 and log-STFT reconstruction, plus
DAC's own commitment and codebook losses. With --autoencoder-steps the first steps train without
quantization and the codebooks are then fitted to the latents by k-means. The codec only ever
hears clean synthetic speech; real fine-tunes use descript/dac_44khz.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from speech_corpus import RATE, bundled_sentences, training_audio
from transformers import DacConfig, DacModel

from dia_tpu.evaluation.spectra import mel_loss, stft_loss

ARCHITECTURE = {
    "encoder_hidden_size": 16,
    "downsampling_ratios": [2, 4, 8, 8],
    "decoder_hidden_size": 256,
    "n_codebooks": 9,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "quantizer_dropout": 0.25,
    "sampling_rate": RATE,
}
MEL_WEIGHT, STFT_WEIGHT = 15.0, 1.0
HOP = math.prod(ARCHITECTURE["downsampling_ratios"])


def arguments(description: str, work: str, out: str, steps: int, crop_frames: int) -> argparse.ArgumentParser:
    """The flags both demo codec trainers take: folders, corpus, schedule, batches, logging and time."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--work", type=Path, default=Path(work), help="checkpoint, log and recipe")
    p.add_argument("--out", type=Path, default=Path(out), help="the exported codec folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passages", type=int, default=300, help="corpus passages, each in one voice")
    p.add_argument("--sentences", type=int, default=10, help="sentences per passage")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-frames", type=int, default=crop_frames, help="training crop length in codec frames")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    return p


def parse() -> argparse.Namespace:
    p = arguments(__doc__.split("\n\n")[0], "runs/demo-codec", "codecs/demo-dac", steps=2000, crop_frames=36)
    p.add_argument(
        "--autoencoder-steps",
        type=int,
        default=0,
        help="first train this many steps without quantization, then fit the codebooks by k-means",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this codec's weights (a DacModel folder), with a fresh optimiser and schedule",
    )
    return p.parse_args()


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch(signal: np.ndarray, rng: np.random.Generator, args: argparse.Namespace, hop: int = HOP) -> torch.Tensor:
    """Random crops of `args.crop_frames` frames of `hop` samples, with random gain (-12..0 dB) and polarity:
    [batch, 1, crop]."""
    length = args.crop_frames * hop
    starts = rng.integers(0, len(signal) - length, size=args.batch)
    crops = np.stack([signal[s : s + length] for s in starts])
    gains = 10 ** (rng.uniform(-12, 0, size=(args.batch, 1)) / 20) * rng.choice([-1.0, 1.0], size=(args.batch, 1))
    return torch.from_numpy((crops * gains).astype(np.float32)).unsqueeze(1)


def autoencode(model: DacModel, x: torch.Tensor) -> torch.Tensor:
    """The codec without quantization: each stage's projections in and out, as a continuous residual
    stack. Warm-up for the encoder, projections and decoder, so that the codebooks later start from
    latents that already differ from frame to frame (from random weights they barely do, and the
    codebooks collapse to a few dozen entries). Returns decoded audio [B, T]."""
    residual, total = model.encoder(x), 0
    for quantizer in model.quantizer.quantizers:
        out = quantizer.out_proj(quantizer.in_proj(residual))
        total, residual = total + out, residual - out
    return model.decoder(total).squeeze(1)


@torch.no_grad()
def init_codebooks(model: DacModel, x: torch.Tensor, rounds: int = 10) -> list[int]:
    """Each stage's codebook from k-means of its projected latents over the crops `x`, assigned by cosine
    as DacModel looks codes up; the entries are the assigned latents' means, so they keep the latents'
    scale. Stages are fitted in order, each on what the ones before it leave. Returns the entries in use."""
    residual, used = model.encoder(x), []
    for quantizer in model.quantizer.quantizers:
        projected = quantizer.in_proj(residual)
        latents = projected.transpose(1, 2).reshape(-1, projected.shape[1])
        entries = latents[torch.randperm(len(latents))[: quantizer.codebook.num_embeddings]].clone()
        for _ in range(rounds):
            nearest = (F.normalize(latents, dim=1) @ F.normalize(entries, dim=1).T).argmax(1)
            sums = torch.zeros_like(entries).index_add_(0, nearest, latents)
            counts = torch.bincount(nearest, minlength=len(entries))
            entries = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], entries)
        quantizer.codebook.weight.copy_(entries)
        quantized, indices = quantizer.decode_latents(projected)
        used.append(int(indices.unique().numel()))
        residual = residual - quantizer.out_proj(quantized)
    return used


def init_training(init: Path | None) -> dict | None:
    """The training record (recipe and summary) of the codec a run starts from, so the lineage stays whole."""
    if init is None or not (init / "training.json").exists():
        return None
    return json.loads((init / "training.json").read_text())


def save_checkpoint(
    work: Path, model: DacModel, optimizer: torch.optim.Optimizer, step: int, rng: np.random.Generator
) -> None:
    """The model, optimiser and data-sampler state, written aside and renamed so it is whole or absent."""
    partial = work / "checkpoint.partial"
    partial.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
        partial / "state.pt",
    )
    (partial / "progress.json").write_text(json.dumps({"step": step, "sampler": rng.bit_generator.state}))
    final = work / "checkpoint"
    if final.exists():
        for f in final.iterdir():
            f.unlink()
        final.rmdir()
    partial.rename(final)


def resume(work: Path, model, optimizer, rng: np.random.Generator) -> int:
    """The run's checkpoint in `work`, when there is one, loaded into the model, optimiser and samplers; returns
    the step to go on from (0 without one)."""
    if not (work / "checkpoint").exists():
        return 0
    state = torch.load(work / "checkpoint" / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    progress = json.loads((work / "checkpoint" / "progress.json").read_text())
    rng.bit_generator.state = progress["sampler"]
    print(f"resumed at step {progress['step']}", flush=True)
    return progress["step"]


def optimise(model, optimizer, loss: torch.Tensor) -> torch.Tensor:
    """One optimiser step on `loss`, the gradient norm clipped at 10; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    return norm


def logged(args: argparse.Namespace, step: int, sums: dict, norm: torch.Tensor, started: float, **extra) -> dict:
    """The row logged at `step`: each loss's mean over the last --log-every steps, then `extra`, the gradient norm,
    the learning rate and the minutes since the session started."""
    row = {"step": step, **{name: float(total) / args.log_every for name, total in sums.items()}, **extra}
    minutes = round((time.perf_counter() - started) / 60, 2)
    return row | {"grad_norm": float(norm), "lr": learning_rate(step - 1, args), "minutes": minutes}


def log_when_due(
    log, args: argparse.Namespace, step: int, names: tuple, sums: np.ndarray, norm, started: float, **extra
) -> None:
    """Every --log-every steps, the `logged` row of the losses `names` (`sums`: each summed since the last row,
    then reset) as a line of log.jsonl and of the console."""
    if step % args.log_every:
        return
    write_row(log, logged(args, step, dict(zip(names, sums, strict=True)), norm, started, **extra))
    sums[:] = 0


def write_row(log, row: dict) -> None:
    """One logged step: a line of log.jsonl and of the console."""
    log.write(json.dumps(row) + "\n")
    log.flush()
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def save_or_stop(args: argparse.Namespace, model, optimizer, step: int, rng, started: float) -> bool:
    """A checkpoint every --save-every steps, at the last step and once --max-minutes are spent; True then."""
    out_of_time = args.max_minutes is not None and time.perf_counter() - started > args.max_minutes * 60
    if step % args.save_every == 0 or step == args.steps or out_of_time:
        save_checkpoint(args.work, model, optimizer, step, rng)
    if out_of_time:
        print(f"stopped after {args.max_minutes} minutes at step {step}; re-run to continue", flush=True)
    return out_of_time


def run_summary(args: argparse.Namespace, model, step: int, started: float) -> dict:
    """What the export's training.json records of this run: its steps, minutes, last logged row, parameters."""
    rows = [json.loads(line) for line in (args.work / "log.jsonl").read_text().splitlines()]
    return {
        "steps": step,
        "minutes_this_session": round((time.perf_counter() - started) / 60, 1),
        "final": rows[-1] if rows else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def export(model: DacModel, out: Path, recipe: dict, summary: dict) -> None:
    """fp16 safetensors and config.json for DacModel.from_pretrained, with the recipe beside them. The model
    is converted in place: it is the last thing done with it."""
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"recipe": recipe, "summary": summary}, indent=1))


def main() -> None:
    args = parse()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    signal, passages = training_audio(args.seed, args.passages, args.sentences, exclude=bundled_sentences())
    print(
        f"corpus: {len(passages)} passages, {len(signal) / RATE / 3600:.2f} h of audio "
        f"in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    recipe = {
        "seed": args.seed,
        "corpus": {
            "passages": args.passages,
            "sentences_per_passage": args.sentences,
            "hours": round(len(signal) / RATE / 3600, 3),
        },
        "architecture": ARCHITECTURE,
        "init": str(args.init) if args.init else None,
        "init_training": init_training(args.init),
        "training": {
            k: getattr(args, k) for k in ("steps", "autoencoder_steps", "batch", "crop_frames", "lr", "warmup")
        },
        "losses": {"mel_l1": MEL_WEIGHT, "log_stft_and_convergence": STFT_WEIGHT, "dac_commitment_and_codebook": 1.0},
    }
    (args.work / "recipe.json").write_text(json.dumps({**recipe, "passages": passages}, indent=1))

    model = DacModel(DacConfig(**ARCHITECTURE)).train()
    if args.init is not None:
        model.load_state_dict(DacModel.from_pretrained(args.init, dtype=torch.float32).state_dict())
    # The projections into each codebook's space have no offset: with one, the encoder can make every frame's
    # projection the same vector (the cheapest commitment) and one entry wins every lookup.
    for quantizer in model.quantizer.quantizers:
        torch.nn.init.zeros_(quantizer.in_proj.bias)
        quantizer.in_proj.bias.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    # A continued run draws other crops than the run it starts from did.
    previous_steps = recipe["init_training"]["summary"]["steps"] if recipe["init_training"] else 0
    rng = np.random.default_rng([args.seed, previous_steps] if previous_steps else args.seed)
    step = resume(args.work, model, optimizer, rng)

    log = (args.work / "log.jsonl").open("a")
    started = time.perf_counter()
    sums = np.zeros(3)
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        if step == args.autoencoder_steps > 0:
            crops = torch.cat([batch(signal, rng, args) for _ in range(32)])
            print(f"codebooks fitted by k-means: entries in use {init_codebooks(model, crops)}", flush=True)
        x = batch(signal, rng, args)
        if step < args.autoencoder_steps:
            decoded, quant = autoencode(model, x), torch.zeros(())
        else:
            out = model(x)
            decoded, quant = out.audio_values, out.loss.mean()
        decoded = decoded[..., : x.shape[-1]]
        target = x[:, 0, : decoded.shape[-1]]
        mel, stft = mel_loss(decoded, target, RATE), stft_loss(decoded, target)
        loss = MEL_WEIGHT * mel + STFT_WEIGHT * stft + quant
        norm = optimise(model, optimizer, loss)
        step += 1
        sums += [mel.item(), stft.item(), quant.item()]
        log_when_due(log, args, step, ("mel", "stft", "quantizer"), sums, norm, started)
        if save_or_stop(args, model, optimizer, step, rng, started):
            return
    export(model.eval(), args.out, recipe, run_summary(args, model, step, started))
    print(f"exported to {args.out}", flush=True)


if __name__ == "__main__":
    main()
