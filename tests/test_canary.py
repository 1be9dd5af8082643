"""A numerical canary: Dia's numbers pinned as literals, so a release of transformers (or torch) that changes what
the model computes fails here. The rest of the suite compares runs with runs, which such a change passes unnoticed.

A 1-layer Dia (conftest's tiny config, the real vocabularies and delay pattern) with weights drawn from a seeded
generator in the order of their names, so a change in transformers' initialisation does not fire it; one fixed
batch from the collator; CPU, fp32. Pinned: a checksum of the logits and the losses of the first training steps
(dia_tpu's loss, torch's AdamW). After a deliberate change, `python scripts/canary_values.py` prints new values.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_dia_config
from transformers import DiaForConditionalGeneration

from dia_tpu.data.batching import Collator
from dia_tpu.families.dia.loss import batch_loss, codebook_weights

SEED = 1234
STEPS = 3
LEARNING_RATE = 1e-3
# Weights ten times an initialisation's usual spread, so attention is far from uniform and its details count.
STD = 0.1
PROJECTIONS = 3

# What `canary_values()` gives with transformers 5.25 and torch 2.13 or 2.9, with one thread or two: the same
# numbers in all four (the logits' double sums differ in their last digit). Other CPUs add in another order and
# may move the last bits of float32; RTOL leaves them that while the negative controls below miss by 20 to 100
# times RTOL (an attention scale a thousandth off moves the projections by 4e-4 of the logits' scale, a learning
# rate a hundredth off moves the second and third losses by 2e-4 and 4e-4).
LOGITS = {
    "mean": -0.007339910532169617,
    "rms": 0.5785191961385191,
    "projection_0": -0.013031850970128293,
    "projection_1": 0.9689115828052929,
    "projection_2": -0.8182102240448551,
}
LOSSES = [7.10252046585083, 6.9420552253723145, 6.8000617027282715]
RTOL = 1e-5


def canary_model(attention_scale: float = 1.0) -> DiaForConditionalGeneration:
    """The tiny Dia with every parameter drawn from N(0, STD^2) by one seeded generator, in name order (norms at 1
    plus that noise); `attention_scale` multiplies every attention's scale, for the negative control."""
    torch.manual_seed(SEED)  # only for what the constructor draws, all of it overwritten below
    model = DiaForConditionalGeneration(tiny_dia_config())
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator) * STD
            param.copy_(noise + 1.0 if "norm" in name else noise)
    if attention_scale != 1.0:
        for module in model.modules():
            if "Attention" in type(module).__name__:
                module.scaling = module.scaling * attention_scale
    return model


def canary_batch(model: DiaForConditionalGeneration) -> dict:
    """Two items of fixed text and codes, one shorter than the other and cut at the frame limit, collated as
    training collates them (delays, BOS, EOS and padding, masked labels)."""
    config = model.config
    decoder = config.decoder_config
    collate = Collator(
        max_text_tokens=24,
        max_audio_frames=12,
        delay_pattern=list(config.delay_pattern),
        bos=decoder.bos_token_id,
        eos=decoder.eos_token_id,
        pad=decoder.pad_token_id,
    )
    generator = torch.Generator().manual_seed(SEED)
    items = [
        {
            "text_ids": torch.randint(3, 256, (length,), generator=generator),
            "codes": torch.randint(0, 1024, (frames, len(config.delay_pattern)), generator=generator),
            "cropped": cropped,
            "unconditional": False,
        }
        for length, frames, cropped in ((20, 12, True), (13, 7, False))
    ]
    return collate(items)


def canary_values(
    attention_scale: float = 1.0, learning_rate: float = LEARNING_RATE
) -> tuple[dict[str, float], list[float]]:
    """A checksum of the logits of the model's first forward: their mean, root mean square and PROJECTIONS
    projections onto seeded random directions (scaled like the logits; unlike a sum, a projection moves with any
    change of any logit). Then the loss (weighted cross-entropy per target weight) of each of the first STEPS
    AdamW steps on the batch. The arguments change one thing each, for the negative controls."""
    model = canary_model(attention_scale).train()  # no dropout in Dia's config: train and eval forwards agree
    batch = canary_batch(model)
    weights = codebook_weights([], len(model.config.delay_pattern))
    denominator = ((batch["labels"] >= 0).float() * weights).sum()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1, foreach=False)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            use_cache=False,
        ).logits.double()
    generator = torch.Generator().manual_seed(SEED)
    checksum = {"mean": logits.mean().item(), "rms": logits.square().mean().sqrt().item()}
    for k in range(PROJECTIONS):
        direction = torch.randn(logits.shape, generator=generator, dtype=torch.float64)
        checksum[f"projection_{k}"] = ((logits * direction).sum() / logits.numel() ** 0.5).item()
    losses = []
    for _ in range(STEPS):
        loss = batch_loss(model, batch, weights, accuracy=False).weighted_sum / denominator
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return checksum, losses


def misses(checksum: dict[str, float], losses: list[float]) -> list[str]:
    """The pinned values that these miss by more than RTOL: relative to the logits' root mean square for the
    mean and the projections (which may lie near zero), to the value itself for the rest."""
    scale = LOGITS["rms"]
    found = [
        f"{key}: {checksum[key]!r}, pinned {pinned!r}"
        for key, pinned in LOGITS.items()
        if not math.isclose(checksum[key], pinned, rel_tol=RTOL, abs_tol=RTOL * scale)
    ]
    found += [
        f"loss of step {step}: {loss!r}, pinned {pinned!r}"
        for step, (loss, pinned) in enumerate(zip(losses, LOSSES, strict=True), 1)
        if not math.isclose(loss, pinned, rel_tol=RTOL)
    ]
    return found


@pytest.fixture(scope="module")
def values():
    return canary_values()


def test_dias_numbers_are_the_pinned_ones(values):
    checksum, losses = values
    assert misses(checksum, losses) == [], (
        "Dia's numbers changed: a new transformers or torch computes the model differently. If that is meant, "
        "`python scripts/canary_values.py` prints the values to pin."
    )
    # The training steps learn: a canary whose optimizer did nothing would pin one loss three times.
    assert losses[0] > losses[1] > losses[2]


def test_a_thousandth_more_attention_scale_misses_the_logits():
    missed = misses(*canary_values(attention_scale=1.001))
    assert any(m.startswith("projection") for m in missed), missed


def test_a_hundredth_more_learning_rate_misses_the_later_losses():
    missed = misses(*canary_values(learning_rate=LEARNING_RATE * 1.01))
    assert [m.split(":")[0] for m in missed] == ["loss of step 2", "loss of step 3"], missed
