"""The memory plan: counts against real models, how the traced activations respond to the options, Dia-1.6B
planned without its memory, and one estimate against a measured peak."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from dia_tpu.config import Config, load
from dia_tpu.data.batching import synthetic_batch
from dia_tpu.plan import DEVICES, GIB, estimate, format_plan, optimizer_state_bytes
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.step import build_trainable

DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]


def _cfg(*extra: str) -> Config:
    return load(ROOT / "configs/demo.yaml", [*TINY, *extra])


def _counts(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["model.freeze.text_encoder=true", "model.freeze.decoder_layers=1"],
        ["model.lora.rank=4", "model.lora.targets=[attention, mlp]"],
        ["model.lora.rank=8", "model.lora.modules_to_save=[logits_dense]", "model.gradient_checkpointing=true"],
    ],
    ids=["full", "frozen", "lora", "lora-head"],
)
def test_counts_match_the_model_training_builds(extra):
    cfg = _cfg(*extra)
    plan = estimate(cfg)
    params, trainable = _counts(build_trainable(cfg, Runtime.assumed(cfg, "cpu")))
    assert (plan.params, plan.trainable) == (params, trainable)
    assert plan.weights == 4 * params
    assert plan.gradients == 4 * trainable
    assert plan.optimizer_state == 8 * trainable  # AdamW: two fp32 moments per trainable parameter
    assert trainable < params or not extra


def test_decoder_length_is_the_collators():
    cfg = _cfg()
    plan = estimate(cfg)
    assert plan.decoder_steps == cfg.data.max_audio_frames + 1 + max(DELAY)
    model = build_trainable(cfg, Runtime.assumed(cfg, "cpu"))
    assert plan.decoder_steps == synthetic_batch(cfg, model.config)["decoder_input_ids"].shape[1]


def test_8bit_state_matches_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    # Below, at and above the 8-bit threshold, and a partial last block.
    shapes = [(4095,), (64, 64), (70, 100), (10,), (9252, 32)]
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    storages = {}
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    assert optimizer_state_bytes("adamw_8bit", [p.numel() for p in params]) == sum(storages.values())


def test_checkpointing_and_precision_change_activations():
    base = estimate(_cfg())
    checkpointed = estimate(_cfg("model.gradient_checkpointing=true"))
    bf16 = estimate(_cfg("train.mixed_precision=bf16"))
    assert checkpointed.activations < base.activations
    assert checkpointed.backward_peak < base.backward_peak
    assert bf16.activations != base.activations
    assert bf16.autocast_copies > 0 and base.autocast_copies == 0
    assert (bf16.weights, bf16.gradients, bf16.optimizer_state) == (base.weights, base.gradients, base.optimizer_state)


def test_activations_grow_with_batch_size():
    one = estimate(_cfg("train.batch_size=2"))
    two = estimate(_cfg("train.batch_size=4"))
    assert 1.6 < two.activations / one.activations < 2.2


def test_processes_shard_under_fsdp_and_add_ddp_buckets():
    cfg = _cfg("train.optimizer=adamw_8bit")
    single, four = estimate(cfg), estimate(cfg, processes=4)
    assert single.ddp_buckets == 0 and four.ddp_buckets == four.gradients
    assert four.total == single.total + four.gradients
    assert four.fsdp_total < single.total
    assert single.gathered == 0 < four.gathered < four.weights  # the root unit, two of its two layers
    text = format_plan(four)
    assert "FSDP" in text and "data parallel" in text
    # bitsandbytes has no XLA kernels: the TPU rows say so.
    assert all(fit.fits_data_parallel is None for fit in four.fits if fit.device.startswith("TPU"))


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_dia_1_6b_plans_without_its_memory():
    cfg = Config()
    cfg.model.architecture = {"delay_pattern": DELAY}  # DiaConfig's defaults are Dia-1.6B
    cfg.data.max_text_tokens, cfg.data.max_audio_frames, cfg.train.batch_size = 256, 860, 2
    before = _rss()
    plan = estimate(cfg)
    assert _rss() - before < GIB  # its fp32 weights alone are 6 GiB
    assert plan.params == plan.trainable == 1_611_160_576
    assert plan.weights + plan.gradients + plan.optimizer_state == 16 * plan.params
    fits = {fit.device: fit for fit in plan.fits}
    assert fits["GPU 16 GB"].fits_data_parallel is False
    assert fits["GPU 80 GB"].fits_data_parallel is True
    text = format_plan(plan)
    assert "1611.16 M parameters" in text
    for name, _, _ in DEVICES:
        assert name in text
    for chip in ("v4", "v5e", "v5p"):
        assert f"TPU {chip}" in text
    assert re.search(r"total.*\s\d+\.\d\d$", text, re.MULTILINE)
    # Sharded: the fewest devices of each kind. One 80 GB GPU holds it; v5e chips (16 GB) need a slice of 8,
    # whose per-device total is the estimate for 8 processes, and on 4 they would not.
    sharded = {s.device: s for s in plan.sharded}
    assert sharded["GPU 80 GB"].count == 1 and sharded["GPU 80 GB"].gathered == 0
    v5e = sharded["TPU v5e"]
    assert v5e.count == 8 and v5e.name == "v5e-8" and sharded["TPU v4"].name.startswith("v4-")
    assert v5e.weights == plan.weights / 8 and v5e.gathered > 0
    assert v5e.total == v5e.weights + v5e.optimizer_state + v5e.step_peak + v5e.gathered <= v5e.usable
    assert v5e.total == estimate(cfg, processes=8, device="xla").fsdp_total
    assert estimate(cfg, processes=4, device="xla").fsdp_total > v5e.usable
    assert "sharded (train.sharding=fsdp)" in text and "v5e-8" in text


def test_estimate_is_near_a_measured_peak():
    """The demo config's training step in a fresh process: the loose version of scripts/check_plan.py."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/check_plan.py"), "--cases=demo", "--steps=2", "--tolerance=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ratio = float(re.search(r"^demo: .* ratio (\d+\.\d+)$", done.stdout, re.MULTILINE).group(1))
    assert 0.5 < ratio < 2.0
