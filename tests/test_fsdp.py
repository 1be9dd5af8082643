"""FSDP2 (`train.sharding=fsdp`) through Accelerate on two CPU processes over gloo: the run is really sharded, it
takes the optimizer steps one process takes with the same global batch, resumes exactly from its sharded
checkpoint, and exports the whole model."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, reset_accelerate, scalars, weights
from safetensors.torch import load_file
from transformers import DiaForConditionalGeneration

from dia_tpu.artifacts.weights import SHARDED_WEIGHTS, read_weights
from dia_tpu.config import ConfigError, load
from dia_tpu.export import export_checkpoint
from dia_tpu.training.recipe import train

STEPS = ["train.max_steps=4", "train.save_every=2", "eval.eval_every=2", "train.log_every=1", "data.eval_size=4"]


# Two ways to ask for FSDP2: the training config on a plain multi-process launch, or the shipped launcher config.
BY_CONFIG = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
BY_LAUNCHER = ["--config_file", str(ROOT / "configs/accelerate/fsdp.yaml")]


def launch(
    codes_dir: Path, run_dir: Path, port: int, *extra: str, by: list[str] = BY_CONFIG
) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    sharding = ["train.sharding=fsdp"] if by is BY_CONFIG else []
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *by,
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *TINY,
        f"data.dataset={codes_dir}",
        f"output.dir={run_dir}",
        *sharding,
        *STEPS,
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def sharded(codes_dir, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("fsdp") / "sharded"
    samples = ["samples.every=4", 'samples.prompts=[{name: hi, text: "[S1] Hi there."}]', "samples.max_seconds=0.3"]
    audio = [
        "eval.audio.every=4",
        "eval.audio.limit=2",
        "eval.audio.max_seconds=0.3",
        "eval.audio.speaker=none",
        "eval.audio.clone=false",
    ]
    return run_dir, launch(codes_dir, run_dir, 29551, *samples, *audio).stdout


def test_each_process_holds_half_and_checkpoints_are_sharded(sharded):
    run_dir, out = sharded
    line = re.search(r"sharding: FSDP2, this process holding ([\d.]+) M of the ([\d.]+) M", out)
    held, total = float(line[1]), float(line[2])
    assert 0.45 < held / total < 0.55  # a silent fall back to plain data parallel would hold all of it
    assert "on 2 process(es)" in out
    for step in ("step_2", "step_4"):
        ckpt = run_dir / "checkpoints" / step
        for part in (SHARDED_WEIGHTS, "optimizer_0"):
            assert sorted(p.name for p in (ckpt / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (ckpt / "model.safetensors").exists()
    # Generated on the main process from the gathered weights; the audio evaluation judged both prompts.
    assert sorted(p.name for p in (run_dir / "samples" / "step_000004").iterdir()) == ["hi.png", "hi.wav", "index.json"]
    assert scalars(run_dir)["audio/utterances"] == [(4, 2.0)]


def test_sharded_steps_equal_one_process_with_the_same_global_batch(sharded, codes_dir, tmp_path):
    run_dir, _ = sharded
    train(
        load(
            ROOT / "configs/demo.yaml",
            [
                *TINY,
                f"data.dataset={codes_dir}",
                f"output.dir={tmp_path / 'one'}",
                *STEPS,
                "train.gradient_accumulation_steps=2",
            ],
        )
    )
    two, one = weights(run_dir), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # Steps 3 and 4 alone moved every tensor by more than ten times its tolerance (14x the least, measured): a
    # step skipped or taken otherwise would fail above.
    halfway = load_file(tmp_path / "one" / "checkpoints" / "step_2" / "model.safetensors")
    for key in one:
        assert (one[key] - halfway[key]).abs().max() > 10 * (1e-5 + 1e-4 * one[key].abs().max()), key
    logged_two, logged_one = scalars(run_dir), scalars(tmp_path / "one")
    for tag in ("train/loss", "eval/loss"):
        assert [s for s, _ in logged_two[tag]] == [s for s, _ in logged_one[tag]]
        assert [v for _, v in logged_two[tag]] == pytest.approx([v for _, v in logged_one[tag]], rel=1e-5)
    # Two steps move the evaluation loss by 3e-3 relative, hundreds of times rel=1e-5.
    (_, at_2), (_, at_4) = logged_one["eval/loss"]
    assert at_4 != pytest.approx(at_2, rel=1e-3)


def test_resume_from_a_sharded_checkpoint_continues_exactly(sharded, codes_dir, tmp_path):
    run_dir, _ = sharded
    # Resumed through the shipped launcher config (the run itself asked by train.sharding): the same sharding.
    launch(codes_dir, tmp_path / "resumed", 29552, f"train.resume={run_dir / 'checkpoints' / 'step_2'}", by=BY_LAUNCHER)
    expected, got = weights(run_dir), weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_export_puts_the_shards_together(sharded, tmp_path):
    run_dir, _ = sharded
    final = weights(run_dir)
    assert read_weights(run_dir / "checkpoints" / "step_4" / SHARDED_WEIGHTS).keys() == final.keys()
    out = export_checkpoint(run_dir / "checkpoints" / "step_4", tmp_path / "export")
    exported = DiaForConditionalGeneration.from_pretrained(out).state_dict()
    for key, value in final.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)


def test_a_sharded_checkpoint_is_not_resumed_unsharded(sharded, codes_dir, tmp_path):
    run_dir, _ = sharded
    # One process: train.sharding=fsdp has nothing to shard, and the run says so before refusing the checkpoint.
    with pytest.raises(ValueError, match="FSDP2-sharded training state and this run is without FSDP"):
        train(
            load(
                ROOT / "configs/demo.yaml",
                [
                    *TINY,
                    f"data.dataset={codes_dir}",
                    f"output.dir={tmp_path / 'r'}",
                    *STEPS,
                    "train.sharding=fsdp",
                    f"train.resume={run_dir / 'checkpoints' / 'step_2'}",
                ],
            )
        )
    # The Accelerator marks the process as launched with FSDP; the next run in it must not take that for --use_fsdp.
    assert "ACCELERATE_USE_FSDP" not in os.environ


class _Planted:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PLANTED_MARK"]),))


def test_a_planted_metadata_pickle_is_never_run(sharded, tmp_path, monkeypatch):
    run_dir, _ = sharded
    ckpt = tmp_path / "step_2"
    shutil.copytree(run_dir / "checkpoints" / "step_2", ckpt)
    mark = tmp_path / "ran"
    monkeypatch.setenv("PLANTED_MARK", str(mark))
    (ckpt / SHARDED_WEIGHTS / ".metadata").write_bytes(pickle.dumps(_Planted()))
    with pytest.raises(ValueError, match=r"\.metadata: not a distributed checkpoint's metadata"):
        export_checkpoint(ckpt, tmp_path / "export")
    assert not mark.exists()


def test_lora_with_fsdp_is_refused_before_any_work(codes_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.sharding=fsdp with model.lora"):
        train(
            load(
                ROOT / "configs/demo.yaml",
                [
                    *TINY,
                    f"data.dataset={codes_dir}",
                    f"output.dir={tmp_path / 'l'}",
                    "train.sharding=fsdp",
                    "model.lora.rank=4",
                ],
            )
        )
    reset_accelerate()
    assert not (tmp_path / "l").exists()
