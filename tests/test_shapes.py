"""Stereo widening, scratch initialisation and the attention scale, on tiny random Dias."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DELAY, ROOT, tiny_dia_config
from transformers import DiaForConditionalGeneration

from dia_tpu.config import load
from dia_tpu.data.batching import synthetic_batch
from dia_tpu.data.tokens import apply_delay
from dia_tpu.families.dia.loss import batch_loss, codebook_weights, target_weight
from dia_tpu.model.shapes import (
    CODE_EMBEDDING,
    HEAD,
    init_from_scratch,
    restore_attention_scale,
    set_attention_scale,
    widen_to_stereo,
)

VOCAB = 1028


def mono_model(seed: int = 0) -> DiaForConditionalGeneration:
    torch.manual_seed(seed)
    return DiaForConditionalGeneration(tiny_dia_config()).eval()


def run(model: DiaForConditionalGeneration, codes: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Logits [B, C, T, V] for undelayed `codes` [B, T, C], delayed with the model's pattern, and random text."""
    dec = model.config.decoder_config
    decoder_ids = apply_delay(codes, model.config.delay_pattern, dec.bos_token_id, dec.pad_token_id)
    text = torch.randint(3, 256, (codes.shape[0], 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(input_ids=text, attention_mask=torch.ones_like(text), decoder_input_ids=decoder_ids).logits
    return logits.view(codes.shape[0], dec.num_channels, -1, dec.vocab_size)


def random_codes(channels: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 1024, (2, 10, channels), generator=torch.Generator().manual_seed(seed))


def test_widened_model_reproduces_mono_logits_for_identical_sides():
    mono = mono_model()
    wide = widen_to_stereo(mono)
    assert wide.config.delay_pattern == DELAY * 2
    codes = random_codes(9)
    expected = run(mono, codes)
    # Channels differ by more than the tolerance below, so a widened channel reading the wrong mono one would fail.
    assert not torch.allclose(expected[:, 0], expected[:, 1], rtol=1e-5, atol=1e-6)
    got = run(wide, torch.cat([codes, codes], dim=-1))
    for c in range(9):
        torch.testing.assert_close(got[:, c], expected[:, c], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[:, 9 + c], expected[:, c], rtol=1e-5, atol=1e-6)
    # Different right codes reach the model: the right channel is really an input.
    other = run(wide, torch.cat([codes, random_codes(9, seed=3)], dim=-1))
    assert not torch.allclose(other[:, 0], expected[:, 0], atol=1e-4)


def test_widened_state_dict():
    mono = mono_model()
    before = {k: v.clone() for k, v in mono.state_dict().items()}
    wide = widen_to_stereo(mono, delay_pattern=list(range(18)))
    assert wide.config.delay_pattern == list(range(18))
    assert wide.config.decoder_config.num_channels == 18
    state = wide.state_dict()
    assert state.keys() == before.keys()
    for key, value in before.items():
        rows = 2 * value.shape[0] if key in (CODE_EMBEDDING, HEAD) else value.shape[0]
        assert state[key].shape == (rows, *value.shape[1:]), key
        if key not in (CODE_EMBEDDING, HEAD):
            assert torch.equal(state[key], value), key
    assert torch.equal(state[CODE_EMBEDDING], torch.cat([before[CODE_EMBEDDING]] * 2) / 2)
    assert torch.equal(state[HEAD][: 9 * VOCAB], before[HEAD])
    assert torch.equal(state[HEAD][9 * VOCAB :], before[HEAD])
    assert torch.equal(wide.model.decoder.embeddings.offsets, torch.arange(18) * VOCAB)
    # The widened model owns its weights: changing them leaves the mono model as it was.
    wide.logits_dense.weight.data.zero_()
    assert torch.equal(mono.logits_dense.weight, before[HEAD])


def test_widening_keeps_dtype_attention_scale_and_generation_config():
    mono = mono_model().to(torch.bfloat16)
    mono.set_attn_implementation("eager")
    set_attention_scale(mono, 0.5)
    mono.generation_config.temperature = 1.3
    wide = widen_to_stereo(mono)
    assert {p.dtype for p in wide.parameters()} == {torch.bfloat16}
    assert wide.model.decoder.rotary_emb.inv_freq.dtype == torch.float32  # as from_pretrained(dtype=bf16) has it
    assert wide.config._attn_implementation == "eager"
    assert wide.config.attention_scale == 0.5
    assert {m.scaling for m in wide.modules() if hasattr(m, "scaling")} == {0.5}
    assert wide.generation_config.temperature == 1.3
    assert not wide.training


@pytest.mark.parametrize(
    ("delays", "message"),
    [
        ([0] * 17, "got 17"),
        ([0] * 17 + [-1], "non-negative"),
        ([0] * 17 + [True], "non-negative"),
    ],
)
def test_widening_refuses_bad_delay_patterns(delays, message):
    with pytest.raises(ValueError, match=message):
        widen_to_stereo(mono_model(), delays)


def test_widening_refuses_a_model_that_is_not_mono():
    stereo = DiaForConditionalGeneration(tiny_dia_config(DELAY * 2))
    with pytest.raises(ValueError, match="needs a 9-codebook model; this one has 18"):
        widen_to_stereo(stereo)


def deep_config():
    """Two layers per stack and a different initializer_range per stack, so each rule is visible."""
    config = tiny_dia_config()
    config.encoder_config.num_hidden_layers = 2
    config.decoder_config.num_hidden_layers = 2
    config.decoder_config.initializer_range = 0.05
    config.initializer_range = 0.1
    return config


def test_scratch_init_is_seeded_and_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    first = init_from_scratch(deep_config(), seed=7, attention_scale=None).state_dict()
    assert torch.equal(torch.get_rng_state(), rng)
    again = init_from_scratch(deep_config(), seed=7, attention_scale=None).state_dict()
    other = init_from_scratch(deep_config(), seed=8, attention_scale=None).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[HEAD], other[HEAD])


def std_of(model, stack: str, suffix: str) -> float:
    tensors = [p.flatten() for n, p in model.named_parameters() if n.startswith(stack) and n.endswith(suffix)]
    return torch.cat(tensors).std().item()


def test_scratch_init_scales_residual_outputs_by_depth():
    config = deep_config()
    model = init_from_scratch(config, seed=0, attention_scale=None)
    # Residual branches per stack: encoder 2 per layer, decoder 3 per layer (self, cross, MLP).
    for stack, std, branches, other in (("model.encoder.", 0.02, 2 * 2, 3 * 2), ("model.decoder.", 0.05, 3 * 2, 2 * 2)):
        assert std_of(model, stack, "q_proj.weight") == pytest.approx(std, rel=0.1)
        for output in ("o_proj.weight", "down_proj.weight"):
            ratio = std_of(model, stack, output) / std_of(model, stack, "q_proj.weight")
            assert ratio == pytest.approx(1 / math.sqrt(branches), rel=0.15), (stack, output)
            # Scaled by the other stack's branch count it would fail: the tolerance tells 4 branches from 6.
            assert ratio != pytest.approx(1 / math.sqrt(other), rel=0.15), (stack, output)
    assert model.logits_dense.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert model.model.decoder.embeddings.embed.weight.std().item() == pytest.approx(0.05, rel=0.05)
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    assert torch.equal(model.model.decoder.embeddings.offsets, torch.arange(9) * VOCAB)


def test_scratch_attention_scale_default_and_explicit():
    model = init_from_scratch(tiny_dia_config(), seed=0, attention_scale=None)
    scales = {m.scaling for m in model.modules() if hasattr(m, "scaling")}
    assert scales == {1 / math.sqrt(16)} and model.config.attention_scale == 1 / math.sqrt(16)
    model = init_from_scratch(tiny_dia_config(), seed=0, attention_scale=0.3)
    assert {m.scaling for m in model.modules() if hasattr(m, "scaling")} == {0.3}


def test_attention_scale_changes_logits_and_survives_save_and_load(tmp_path):
    model = mono_model()
    codes = random_codes(9)
    plain = run(model, codes)
    set_attention_scale(model, 4.0)  # large enough to move the tiny random model's near-uniform attention
    scaled = run(model, codes)
    assert not torch.allclose(plain, scaled, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = DiaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.attention_scale == 4.0
    assert {m.scaling for m in loaded.modules() if hasattr(m, "scaling")} == {1}  # why restoring is needed
    restore_attention_scale(loaded)
    torch.testing.assert_close(run(loaded, codes), scaled, rtol=0, atol=0)


def test_restore_leaves_a_model_without_a_recorded_scale_at_one():
    model = mono_model()
    restore_attention_scale(model)
    assert {m.scaling for m in model.modules() if hasattr(m, "scaling")} == {1}


def test_scratch_model_learns_a_fixed_batch():
    cfg = load(
        ROOT / "configs/demo.yaml", ["data.max_audio_frames=16", "data.max_text_tokens=24", "train.batch_size=2"]
    )
    model = init_from_scratch(tiny_dia_config(), seed=0, attention_scale=None).train()
    batch = synthetic_batch(cfg, model.config)
    weights = codebook_weights([], 9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        parts = batch_loss(model, batch, weights)
        loss = parts.weighted_sum / target_weight(batch["labels"], weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.05)  # a fresh model predicts nearly uniformly
    assert losses[-1] < 0.7 * losses[0]
