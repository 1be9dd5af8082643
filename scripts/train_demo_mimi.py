"""Train a demo codec for Dia2: a small transformers `MimiModel` of the real codec's interface (24 kHz, 12.5
frames a second, a split residual quantizer: one semantic codebook, the rest acoustic) on the espeak-ng speech
speech_corpus.py makes, then export it for `MimiModel.from_pretrained`.

    python scripts/train_demo_mimi.py --work runs/demo-mimi --out codecs/demo-mimi

transformers' Mimi has no training path: its codebooks are buffers (a running sum of the vectors each entry
won, and how often it won), read only by nearest-neighbour lookup. This script trains them as Kyutai's codec
keeps them, by exponential moving averages of those two buffers, with entries that stop winning re-seeded
from the batch; the encoder sees the quantizer as the identity (straight-through) and is pulled towards its
codes by a commitment loss. Losses otherwise as the demo DAC's (multi-scale log-mel L1 and log-STFT); no
adversarial loss and no semantic distillation (the teacher Kyutai distils from is not reachable here), so the
"semantic" codebook is one more codebook. As train_demo_codec.py: a re-run resumes the checkpoint in --work
exactly, `log.jsonl` and `recipe.json` beside it, and --autoencoder-steps first trains without quantization
and then fits the codebooks by k-means.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from speech_corpus import RATE as CORPUS_RATE
from speech_corpus import bundled_sentences, training_audio
from train_demo_codec import (
    MEL_WEIGHT,
    STFT_WEIGHT,
    arguments,
    batch,
    init_training,
    learning_rate,
    log_when_due,
    optimise,
    resume,
    run_summary,
    save_or_stop,
)
from transformers import MimiConfig, MimiModel

from dia_tpu.evaluation.spectra import mel_loss, stft_loss

ARCHITECTURE = {
    "sampling_rate": 24000,
    "hidden_size": 128,
    "num_filters": 24,
    "num_residual_layers": 1,
    "upsampling_ratios": [8, 6, 5, 4],
    "upsample_groups": 128,
    # 2.3 h of audio at 12.5 frames a second is about 100,000 frames: enough to place 256 entries a codebook, not
    # 1024 (tried: with 1024 of dimension 32, a few dozen entries took every frame within 150 steps).
    "codebook_size": 256,
    "codebook_dim": 16,
    "vector_quantization_hidden_dimension": 16,
    "num_quantizers": 8,
    "num_semantic_quantizers": 1,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 32,
    "intermediate_size": 512,
    "sliding_window": 64,
    "use_cache": True,  # as upstream Dia2 decodes: the codec returns its cache beside the audio
}
RATE = ARCHITECTURE["sampling_rate"]
HOP = math.prod(ARCHITECTURE["upsampling_ratios"]) * 2  # the SEANet's strides, then the latent's stride of 2
DEAD = 0.25  # an entry whose moving usage falls below this share of its fair share is re-seeded
RECENT = 4096  # the latest residuals each codebook keeps, to re-seed entries from


def parse() -> argparse.Namespace:
    p = arguments(__doc__.split("\n\n")[0], "runs/demo-mimi", "codecs/demo-mimi", steps=3000, crop_frames=16)
    p.add_argument("--decay", type=float, default=0.99, help="the codebooks' moving-average decay")
    p.add_argument(
        "--quantized-share",
        type=float,
        default=1.0,
        help="share of training items decoded from quantized latents (Kyutai's Mimi: 0.5); the rest unquantized",
    )
    p.add_argument("--commitment", type=float, default=1.0, help="weight of the commitment loss")
    p.add_argument("--autoencoder-steps", type=int, default=300, help="steps without quantization first")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this codec's weights and codebooks (a MimiModel folder), with a fresh optimiser and schedule",
    )
    return p.parse_args()


def stages(model: MimiModel) -> list:
    """The split quantizer's two residual quantizers: semantic, then acoustic. Each quantizes the whole latent."""
    q = model.quantizer
    return [q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer]


def reset_cache(codebook) -> None:
    codebook._embed = None  # Mimi caches embed_sum / cluster_usage on first use


def quantize(stage, latent: torch.Tensor, decay: float) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One residual quantizer over `latent` [B, H, T], differentiable: returns its output projection of the
    quantized latent (straight-through, so the encoder's gradient passes as if unquantized), the commitment
    loss, and each codebook's entries in use; the codebooks are updated by moving averages of this `decay`."""
    projected = stage.input_proj(latent)
    flat = projected.transpose(1, 2).reshape(-1, projected.shape[1])
    residual, total, commitment, used = flat, torch.zeros_like(flat), flat.new_zeros(()), []
    for layer in stage.layers:
        book = layer.codebook
        nearest = torch.cdist(residual.detach(), book.embed).argmin(1)
        chosen = book.embed[nearest]
        commitment = commitment + F.mse_loss(residual, chosen.detach())
        used.append(int(nearest.unique().numel()))
        update(book, residual.detach(), nearest, decay)
        total = total + chosen.detach()
        residual = residual - chosen.detach()
    quantized = flat + (total - flat).detach()
    back = quantized.reshape(projected.shape[0], projected.shape[2], -1).transpose(1, 2)
    return stage.output_proj(back), commitment / len(stage.layers), used


@torch.no_grad()
def update(book, vectors: torch.Tensor, nearest: torch.Tensor, decay: float) -> None:
    """Moving averages of each entry's wins and of the vectors it won; entries nearly never winning take one of
    the codebook's RECENT latest vectors (a batch alone, 128 frames, is too few to seed many), so none stays dead."""
    size = book.cluster_usage.shape[0]
    counts = torch.bincount(nearest, minlength=size).float()
    sums = torch.zeros_like(book.embed_sum).index_add_(0, nearest, vectors)
    book.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
    book.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    fair = len(vectors) / size
    recent = getattr(book, "recent", None)
    book.recent = vectors if recent is None else torch.cat([vectors, recent])[:RECENT]
    dead = book.cluster_usage < DEAD * fair
    if dead.any():
        seeds = book.recent[torch.randint(len(book.recent), (int(dead.sum()),), device=vectors.device)]
        book.cluster_usage[dead] = fair
        book.embed_sum[dead] = seeds * fair
    reset_cache(book)


def autoencode(stage, latent: torch.Tensor) -> torch.Tensor:
    return stage.output_proj(stage.input_proj(latent))


def forward(
    model: MimiModel, x: torch.Tensor, mode: str, decay: float, unquantized: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Audio [B, 1, S] through encoder, quantizer ("autoencoder": none) and decoder: (decoded [B, S'],
    commitment loss, entries in use per codebook). `unquantized` [B] (bool): items the decoder gets unquantized
    (as Kyutai trains Mimi, quantizing only part of the time); the codebooks still learn from every item."""
    latent = model.encoder(x).latents
    if mode == "autoencoder":
        decoded_latent, commitment, used = sum(autoencode(s, latent) for s in stages(model)), latent.new_zeros(()), []
    else:
        parts = [quantize(s, latent, decay) for s in stages(model)]
        decoded_latent = sum(p[0] for p in parts)
        if unquantized is not None and unquantized.any():
            plain = sum(autoencode(s, latent) for s in stages(model))
            decoded_latent = torch.where(unquantized[:, None, None], plain, decoded_latent)
        commitment, used = sum(p[1] for p in parts) / len(parts), [u for p in parts for u in p[2]]
    return model.decoder(decoded_latent).audio_values.squeeze(1), commitment, used


@torch.no_grad()
def init_codebooks(model: MimiModel, x: torch.Tensor, fair: float, rounds: int = 10) -> list[int]:
    """Each codebook from k-means of what the codebooks before it in its stage leave of the projected latents
    of the crops `x`; entries are cluster means, each with the `fair` usage (a training batch's vectors over
    the entries). Returns the entries in use."""
    latent, used = model.encoder(x).latents, []
    for stage in stages(model):
        projected = stage.input_proj(latent)
        residual = projected.transpose(1, 2).reshape(-1, projected.shape[1])
        for layer in stage.layers:
            book = layer.codebook
            entries = residual[torch.randperm(len(residual))[: book.cluster_usage.shape[0]]].clone()
            for _ in range(rounds):
                nearest = torch.cdist(residual, entries).argmin(1)
                sums = torch.zeros_like(entries).index_add_(0, nearest, residual)
                counts = torch.bincount(nearest, minlength=len(entries))
                entries = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], entries)
            book.embed_sum.copy_(entries * fair)
            book.cluster_usage.fill_(fair)
            reset_cache(book)
            nearest = torch.cdist(residual, entries).argmin(1)
            used.append(int(nearest.unique().numel()))
            residual = residual - entries[nearest]
    return used


def export(model: MimiModel, out: Path, recipe: dict, summary: dict) -> None:
    """fp32 safetensors and config.json for MimiModel.from_pretrained, with the recipe beside them. Each
    codebook is stored as its entries with usage one (the lookup is the same; a moving usage near zero would
    lose its entry to rounding in any lower precision)."""
    with torch.no_grad():
        for stage in stages(model):
            for layer in stage.layers:
                book = layer.codebook
                book.embed_sum.copy_(book.embed)
                book.cluster_usage.fill_(1.0)
                reset_cache(book)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({"recipe": recipe, "summary": summary}, indent=1))


def corpus(args: argparse.Namespace) -> tuple[np.ndarray, list[dict]]:
    signal, passages = training_audio(args.seed, args.passages, args.sentences, exclude=bundled_sentences())
    return soxr.resample(signal, CORPUS_RATE, RATE).astype(np.float32), passages


def main() -> None:
    args = parse()
    if args.init is not None:
        args.autoencoder_steps = 0  # the codebooks come trained
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    signal, passages = corpus(args)
    hours = len(signal) / RATE / 3600
    print(f"corpus: {len(passages)} passages, {hours:.2f} h in {time.perf_counter() - began:.0f} s", flush=True)
    settings = ("steps", "autoencoder_steps", "batch", "crop_frames", "lr", "warmup", "decay", "quantized_share")
    recipe = {
        "seed": args.seed,
        "corpus": {"passages": args.passages, "sentences_per_passage": args.sentences, "hours": round(hours, 3)},
        "architecture": ARCHITECTURE,
        "init": str(args.init) if args.init else None,
        "init_training": init_training(args.init),
        "training": {k: getattr(args, k) for k in settings},
        "losses": {"mel_l1": MEL_WEIGHT, "log_stft_and_convergence": STFT_WEIGHT, "commitment": args.commitment},
    }
    (args.work / "recipe.json").write_text(json.dumps({**recipe, "passages": passages}, indent=1))

    model = MimiModel(MimiConfig(**ARCHITECTURE)).train()
    if args.init is not None:
        model.load_state_dict(MimiModel.from_pretrained(args.init, dtype=torch.float32).state_dict())
        fair = args.batch * args.crop_frames / ARCHITECTURE["codebook_size"]
        with torch.no_grad():  # exported entries have usage one: scaled to a batch's fair share, entries kept
            for stage in stages(model):
                for layer in stage.layers:
                    layer.codebook.embed_sum.mul_(fair)
                    layer.codebook.cluster_usage.fill_(fair)
                    reset_cache(layer.codebook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    # A continued run draws other crops than the run it starts from did.
    previous = recipe["init_training"]["summary"]["steps"] if recipe["init_training"] else 0
    rng = np.random.default_rng([args.seed, previous] if previous else args.seed)
    step = resume(args.work, model, optimizer, rng)
    for stage in stages(model):
        for layer in stage.layers:
            reset_cache(layer.codebook)

    log = (args.work / "log.jsonl").open("a")
    started = time.perf_counter()
    sums, used = np.zeros(3), []
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        if step == args.autoencoder_steps > 0:
            crops = torch.cat([batch(signal, rng, args, HOP) for _ in range(16)])
            fair = args.batch * args.crop_frames / ARCHITECTURE["codebook_size"]
            print(f"codebooks fitted by k-means: entries in use {init_codebooks(model, crops, fair)}", flush=True)
        x = batch(signal, rng, args, HOP)
        mode = "autoencoder" if step < args.autoencoder_steps else "quantized"
        unquantized = torch.from_numpy(rng.random(len(x)) >= args.quantized_share) if args.quantized_share < 1 else None
        decoded, commitment, used = forward(model, x, mode, args.decay, unquantized)
        decoded = decoded[..., : x.shape[-1]]
        target = x[:, 0, : decoded.shape[-1]]
        mel, stft = mel_loss(decoded, target, RATE), stft_loss(decoded, target)
        loss = MEL_WEIGHT * mel + STFT_WEIGHT * stft + args.commitment * commitment
        norm = optimise(model, optimizer, loss)
        step += 1
        sums += [mel.item(), stft.item(), commitment.item()]
        log_when_due(log, args, step, ("mel", "stft", "commitment"), sums, norm, started, entries_used=used)
        if save_or_stop(args, model, optimizer, step, rng, started):
            return
    export(model.eval(), args.out, recipe, run_summary(args, model, step, started))
    print(f"exported to {args.out}", flush=True)


if __name__ == "__main__":
    main()
