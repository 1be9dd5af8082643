"""The one loss: per-codebook masked cross-entropy on Dia's channel-major logits, in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dia_tpu.data.batching import IGNORE_INDEX
from dia_tpu.families.dia.loss import codebook_loss, codebook_weights, target_weight

SIZE, STEPS, CHANNELS, VOCAB = 2, 7, 3, 11
WEIGHTS = torch.tensor([4.0, 1.0, 0.5])


def example(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits [B*C, T, V] and labels [B, T, C] with about a third of the labels ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(SIZE * CHANNELS, STEPS, VOCAB, generator=gen)
    labels = torch.randint(0, VOCAB, (SIZE, STEPS, CHANNELS), generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.35] = IGNORE_INDEX
    labels[1, :, 2] = IGNORE_INDEX  # one codebook of one sample with nothing to count
    return logits, labels


def reference(
    logits: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ce, hits and counts [B, C], one plain cross_entropy per (sample, codebook) computed in `dtype`; logits
    row b*C + c."""
    size, _, channels = labels.shape
    ce, hits, counts = (torch.zeros(size, channels) for _ in range(3))
    for b in range(size):
        for c in range(channels):
            rows, targets = logits[b * channels + c].to(dtype), labels[b, :, c]
            ce[b, c] = F.cross_entropy(rows, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            counted = targets != IGNORE_INDEX
            counts[b, c] = counted.sum()
            hits[b, c] = (rows.argmax(-1)[counted] == targets[counted]).sum()
    return ce, hits, counts


def test_codebook_loss_matches_plain_cross_entropy_per_codebook():
    logits, labels = example()
    parts = codebook_loss(logits, labels, WEIGHTS)
    ce, hits, counts = reference(logits, labels)

    torch.testing.assert_close(parts.ce_sum, ce)
    torch.testing.assert_close(parts.weighted_sum, (ce * WEIGHTS).sum())
    assert torch.equal(parts.count, counts)
    assert torch.equal(parts.correct, hits)
    assert parts.count[1, 2] == 0 and parts.ce_sum[1, 2] == 0
    # A training step asks for no accuracy: the same loss, no argmax over the logits.
    training = codebook_loss(logits, labels, WEIGHTS, accuracy=False)
    assert training.correct is None and torch.equal(training.weighted_sum, parts.weighted_sum)


def test_correct_counts_argmax_hits():
    logits, labels = example(1)
    # Make every counted target of codebook 0 the argmax, so all of them are hits.
    for b in range(SIZE):
        for t in range(STEPS):
            if labels[b, t, 0] != IGNORE_INDEX:
                logits[b * CHANNELS, t, labels[b, t, 0]] = 100.0
    parts = codebook_loss(logits, labels, WEIGHTS)
    assert torch.equal(parts.correct[:, 0], parts.count[:, 0])
    assert torch.equal(parts.correct, reference(logits, labels)[1])


def test_layout_matches_dia_forward_and_its_builtin_loss(tiny_dia):
    """With unit weights the loss is the mean CE Dia itself computes over channel-major labels [B*C, T]."""
    channels = tiny_dia.config.decoder_config.num_channels
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(3, 256, (2, 6), generator=gen)
    decoder_input_ids = torch.randint(0, 1024, (2, 5, channels), generator=gen)
    labels = torch.randint(0, 1024, (2, 5, channels), generator=gen)
    labels[0, 3:, :4] = IGNORE_INDEX
    with torch.no_grad():
        out = tiny_dia(
            input_ids=text,
            attention_mask=torch.ones_like(text),
            decoder_input_ids=decoder_input_ids,
            labels=labels.permute(0, 2, 1).reshape(2 * channels, 5),
        )
    ones = torch.ones(channels)
    parts = codebook_loss(out.logits, labels, ones)
    torch.testing.assert_close(parts.weighted_sum / target_weight(labels, ones), out.loss)
    # The same logits read batch-major (row c*B + b) miss Dia's loss by far more than the tolerance (~2e-5),
    # so the check above sees a wrong layout even on this nearly uniform random model.
    batch_major = out.logits.view(channels, 2, 5, -1).transpose(0, 1).reshape(2 * channels, 5, -1)
    assert (codebook_loss(batch_major, labels, ones).weighted_sum / target_weight(labels, ones) - out.loss).abs() > 1e-3


def test_ignored_positions_do_not_matter_and_counted_ones_do():
    logits, labels = example(2)
    base = codebook_loss(logits, labels, WEIGHTS)
    ignored = (labels == IGNORE_INDEX).permute(0, 2, 1).reshape(SIZE * CHANNELS, STEPS)

    noisy = logits.clone()
    noisy[ignored] = 1e4 * torch.randn(int(ignored.sum()), VOCAB, generator=torch.Generator().manual_seed(3))
    changed = codebook_loss(noisy, labels, WEIGHTS)
    for name in ("weighted_sum", "ce_sum", "correct", "count"):
        assert torch.equal(getattr(changed, name), getattr(base, name)), name

    b, t, c = (labels != IGNORE_INDEX).nonzero()[0].tolist()
    nudged = logits.clone()
    nudged[b * CHANNELS + c, t, labels[b, t, c]] += 5.0
    moved = codebook_loss(nudged, labels, WEIGHTS)
    assert moved.weighted_sum < base.weighted_sum
    assert moved.ce_sum[b, c] < base.ce_sum[b, c]
    others = torch.ones(SIZE, CHANNELS, dtype=torch.bool)
    others[b, c] = False
    assert torch.equal(moved.ce_sum[others], base.ce_sum[others])


def test_gradient_flows_only_through_counted_positions():
    logits, labels = example(4)
    logits.requires_grad_(True)
    codebook_loss(logits, labels, WEIGHTS).weighted_sum.backward()
    counted = (labels != IGNORE_INDEX).permute(0, 2, 1).reshape(SIZE * CHANNELS, STEPS)

    assert not logits.grad[~counted].any()
    assert (logits.grad[counted].abs().sum(-1) > 0).all()
    # Each counted position's gradient is weight[c] * (softmax - onehot), which sums to zero over the vocabulary;
    # each is far larger than the tolerance (1e-5), so a gradient that did not cancel would show.
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(SIZE * CHANNELS, STEPS))
    assert (logits.grad[counted].abs().sum(-1) > 0.1).all()


def test_loss_is_computed_in_fp32_for_bf16_logits():
    logits, labels = example(5)
    half = logits.to(torch.bfloat16)
    parts = codebook_loss(half, labels, WEIGHTS)
    upcast = codebook_loss(half.float(), labels, WEIGHTS)

    assert parts.weighted_sum.dtype == parts.ce_sum.dtype == torch.float32
    torch.testing.assert_close(parts.weighted_sum, upcast.weighted_sum)
    torch.testing.assert_close(parts.ce_sum, reference(half.float(), labels)[0])
    # Computed in bf16 instead, the sums are off by far more than the tolerance: the checks above can fail.
    in_bf16 = reference(half, labels, torch.bfloat16)[0]
    assert ((in_bf16 * WEIGHTS).sum() - upcast.weighted_sum).abs() > 0.01
    assert (in_bf16 - upcast.ce_sum).abs().max() > 0.01


def test_default_codebook_weights():
    assert codebook_weights([], 9).tolist() == [4.0] + [1.0] * 8
    assert codebook_weights([], 9).dtype == torch.float32
    assert codebook_weights([2, 1, 1], 3).tolist() == [2.0, 1.0, 1.0]


def test_codebook_weights_of_the_wrong_length_name_both_counts():
    with pytest.raises(ValueError, match=r"3 entries.*9 codebooks"):
        codebook_weights([1.0, 1.0, 1.0], 9)


def test_target_weight_is_the_weighted_count():
    _, labels = example(6)
    counts = (labels != IGNORE_INDEX).sum(dim=(0, 1)).float()
    torch.testing.assert_close(target_weight(labels, WEIGHTS), (counts * WEIGHTS).sum())
    parts = codebook_loss(torch.zeros(SIZE * CHANNELS, STEPS, VOCAB), labels, WEIGHTS)
    torch.testing.assert_close(target_weight(labels, WEIGHTS), (parts.count * WEIGHTS).sum())
