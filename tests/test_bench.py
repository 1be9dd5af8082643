"""`dia-tpu bench` on the demo's tiny model, shrunk further: one timed step in a spawned process."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from transformers import DiaConfig

from dia_tpu.bench.train import bench
from dia_tpu.config import load
from dia_tpu.data.batching import IGNORE_INDEX, synthetic_batch

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_bench_counts_frames_and_reports_throughput():
    cfg = load(DEMO, ["data.max_audio_frames=16", "data.max_text_tokens=24", "train.batch_size=3"])
    batch = synthetic_batch(cfg, DiaConfig(**cfg.model.architecture))
    # Codebook 0 has no delay: its targets are every real frame plus one EOS per clip.
    assert int((batch["labels"][..., 0] != IGNORE_INDEX).sum()) == 3 * (16 + 1)
    assert int(batch["attention_mask"].sum()) == 3 * (24 - 10)

    started = time.perf_counter()
    (result,) = bench(cfg, steps=2, warmup=0, precisions=["no"])
    wall = time.perf_counter() - started  # the spawned process, its start-up and both steps: more than they took
    assert result["precision"] == "no"
    assert result["frames"] == 3 * 16 * 2
    # The timed seconds are checked against the wall time seen from outside (which also holds the process's
    # start-up): the figures derived from them below are then checked against the counts they divide.
    assert 0 < result["seconds"] < wall
    assert result["frames_per_s"] == pytest.approx(result["frames"] / result["seconds"])
    assert result["frames_per_s"] > result["frames"] / wall
    assert result["step_ms"] == pytest.approx(1000 * result["seconds"] / 2) and result["step_ms"] < 1000 * wall / 2
    assert result["params"] > 0 and result["peak_rss_mib"] > 0
    assert math.isfinite(result["final_loss"])
    # The step's FLOPs, counted by torch, at least the forward and backward matrix products of its linear layers.
    model = DiaConfig(**cfg.model.architecture)
    assert result["flops_per_step"] > 6 * 3 * 16 * model.decoder_config.hidden_size**2
    assert result["flops_per_s"] == pytest.approx(2 * result["flops_per_step"] / result["seconds"])
    # A training step cannot do its FLOPs faster than the machine's best square matmul.
    assert result["matmul_flops_per_s"] > 0 and 0 < result["share_of_matmul"] < 1
    # The recorded products are the matrix products among the counted FLOPs (attention's are counted apart).
    assert 0.5 * result["flops_per_step"] < result["products_flops"] <= result["flops_per_step"]
    # Replayed alone, the step's own products take part of the step, not more than all of it.
    assert 0 < result["products_ms"] and 0 < result["products_share_of_step"] <= 1


def test_replayed_products_match_the_recorded_ones():
    import torch

    from dia_tpu.bench.limits import MatmulRecorder, products_alone

    a, w = torch.randn(6, 8), torch.randn(5, 8)
    with MatmulRecorder() as recorder:
        for _ in range(3):
            torch.nn.functional.linear(a, w, torch.zeros(5))  # addmm with the weight transposed
        torch.bmm(torch.randn(2, 3, 4), torch.randn(2, 4, 7))
    assert sorted(recorder.seen.values()) == [1, 3]
    seconds, flops = products_alone(recorder.seen, seconds_each=0.01)
    assert flops == 3 * 2 * 6 * 8 * 5 + 2 * 2 * 3 * 4 * 7
    assert seconds > 0


def test_generation_bench_reports_real_time_factor_per_batch_and_the_memory_floor():
    from dia_tpu.bench.generate import bench_generation, format_generation_table

    cfg = load(DEMO, ["model.codec=null", "model.codec_architecture={sampling_rate: 44100}"])
    started = time.perf_counter()
    results = bench_generation(
        cfg, seconds=0.25, batch_sizes=[1, 2], precisions=["no"], decodings=["dia_tpu"], repeats=1
    )
    wall = time.perf_counter() - started  # both batch sizes, with model loading: more than either took
    assert [(r["batch_size"], r["decoding"]) for r in results] == [(1, "dia_tpu"), (2, "dia_tpu")]
    for r in results:
        asked = round(0.25 * 44100 / 512) / (44100 / 512)  # whole frames
        assert 0 < r["audio_seconds"] <= r["batch_size"] * asked + 1e-9
        assert 0 < r["seconds"] < wall and r["real_time_factor"] == pytest.approx(r["audio_seconds"] / r["seconds"])
        # The floor reads the decoder's and head's fp32 weights, not the encoder's or the embedding tables.
        assert 0 < r["floor_ms_per_step"] < r["ms_per_step"]
    dia = DiaConfig(**cfg.model.architecture).decoder_config
    head = 4 * dia.hidden_size * dia.num_channels * dia.vocab_size
    assert head < results[0]["weight_bytes_per_step"] < 4 * 20 * dia.num_hidden_layers * dia.hidden_size**2 + head
    assert "x real time" in format_generation_table(results)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        bench_generation(cfg, 0.25, [1], ["fp16"], [False])
