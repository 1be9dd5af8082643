"""Resuming a run as it was, or knowingly otherwise: no silent fork from an older checkpoint, and a changed
config is either refused with the list of changes or, when allowed, takes effect and is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reset_accelerate, scalars, tiny, weights

from dia_tpu.config import ConfigError
from dia_tpu.training.recipe import train

EVERY_TWO = [
    "train.max_steps=6",
    "train.save_every=2",
    "train.keep_last=3",
    "eval.eval_every=1000",
    "train.report_to=none",
]


def test_an_older_checkpoint_is_refused_unless_forked(codes_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(codes_dir, run_dir, *EVERY_TWO))
    before = weights(run_dir)
    step_2 = run_dir / "checkpoints" / "step_2"
    reset_accelerate()
    with pytest.raises(ValueError, match="step_2 is older than this run's newest checkpoint step_6.*--fork"):
        train(tiny(codes_dir, run_dir, *EVERY_TWO, f"train.resume={step_2}"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]

    # Forked, the later history is moved aside whole and the branch trains on from step 2.
    reset_accelerate()
    train(tiny(codes_dir, run_dir, *EVERY_TWO, f"train.resume={step_2}", "train.fork=true"))
    [forked] = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("forked-")]
    assert sorted(p.name for p in forked.iterdir()) == ["best", "step_4", "step_6"]
    after = weights(run_dir)
    for key in before:  # the same settings from the same state: the branch retraces the run
        assert torch.equal(before[key], after[key]), key


def test_a_changed_model_is_refused_before_it_is_built(codes_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(codes_dir, run_dir, "train.max_steps=2", "train.save_every=2", "train.report_to=none"))
    reset_accelerate()
    with pytest.raises(
        ConfigError,
        match=r"(?s)other model settings.*"
        r"model.architecture.decoder_config.hidden_size: 64 then, 32 now\n"
        r"  - model.lora.rank: 0 then, 4 now$",
    ):
        train(
            tiny(
                codes_dir,
                run_dir,
                "train.max_steps=4",
                "train.resume=auto",
                "model.lora.rank=4",
                "model.architecture.decoder_config.hidden_size=32",
            )
        )


def test_changed_training_settings_are_refused_or_take_effect(codes_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = ["train.lr_scheduler=constant", "train.save_every=4", "train.log_every=1", "eval.eval_every=1000"]
    train(tiny(codes_dir, run_dir, *common, "train.max_steps=4"))
    changed = [*common, "train.max_steps=6", "train.learning_rate=5e-4", "train.batch_size=4", "train.resume=auto"]
    reset_accelerate()
    with pytest.raises(
        ConfigError,
        match=r"(?s)train.resume_changes=allow.*train.batch_size: 2 then, 4 now.*"
        r"train.learning_rate: 0.001 then, 0.0005 now.*train.max_steps",
    ):
        train(tiny(codes_dir, run_dir, *changed))

    reset_accelerate()
    train(tiny(codes_dir, run_dir, *changed, "train.resume_changes=allow"))
    lr = dict(scalars(run_dir)["train/lr"])
    assert lr[4] == pytest.approx(1e-3) and lr[5] == pytest.approx(5e-4) and lr[6] == pytest.approx(5e-4)
    [entry] = [json.loads(line) for line in (run_dir / "resume_changes.jsonl").read_text().splitlines()]
    assert entry["step"] == 4
    assert entry["changes"]["train.learning_rate"] == {"then": 1e-3, "now": 5e-4}
    assert set(entry["changes"]) == {"train.learning_rate", "train.max_steps", "train.batch_size"}
