"""End to end on CPU: prepare the bundled sample, train through Accelerate, resume, export, generate."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, TINY, reset_accelerate, scalars, tiny, two_process_launch, weights
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoProcessor, DiaForConditionalGeneration

from dia_tpu.artifacts import RunFolder, is_complete
from dia_tpu.cli import main
from dia_tpu.config import ConfigError, load
from dia_tpu.generation.synthesize import GenerationSettings, synthesize
from dia_tpu.model.build import build_model
from dia_tpu.model.load import load_for_inference
from dia_tpu.training.recipe import train

# The Makefile's XLA half runs this file again on torch_xla's CPU device.
ON_XLA = bool(os.environ.get("PJRT_DEVICE"))


def test_resume_continues_exactly(codes_dir, tmp_path):
    straight = tmp_path / "straight"
    cfg = tiny(
        codes_dir, straight, "train.max_steps=30", "train.save_every=10", "train.keep_last=3", "eval.eval_every=10"
    )
    final = train(cfg)

    # Checkpoints hold the whole state and the configs that make them loadable.
    ckpt = straight / "checkpoints" / "step_20"
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step_10", "step_20", "step_30"]
    for name in [
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "train_state.json",
        "checkpoint.json",
        "config.json",
        "config.yaml",
    ]:
        assert (ckpt / name).is_file(), name
    assert not list(ckpt.glob("custom_checkpoint_*")) and is_complete(ckpt)  # no pickle of dia_tpu's own
    assert json.loads((ckpt / "train_state.json").read_text())["step"] == 20
    # safetensors on CPU and GPU; torch.save on XLA, where safetensors cannot load onto device tensors.
    assert (ckpt / "model.safetensors").is_file() or (ckpt / "pytorch_model.bin").is_file()
    assert load(ckpt / "config.yaml") == cfg

    # 14 batches per epoch: step 20 is mid-way through the second epoch, with crops and CFG drops in play.
    reset_accelerate()
    resumed = tmp_path / "resumed"
    train(
        tiny(
            codes_dir,
            resumed,
            "train.max_steps=30",
            "train.save_every=10",
            "eval.eval_every=10",
            f"train.resume={ckpt}",
        )
    )
    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)

    # The loss fell and both runs logged it; the export loads with transformers' own classes.
    logged = scalars(straight)
    losses = [v for _, v in logged["train/loss"]]
    assert losses[-1] < losses[0]
    assert [s for s, _ in logged["eval/loss"]] == [10, 20, 30]
    model = DiaForConditionalGeneration.from_pretrained(final)
    assert model.config.decoder_config.hidden_size == 64
    processor = AutoProcessor.from_pretrained(final)
    assert processor.audio_tokenizer.config.sampling_rate == 44100
    assert load(final / "config.yaml") == cfg


def test_accumulation_matches_larger_batch(codes_dir, tmp_path):
    common = [
        "train.max_steps=3",
        "train.save_every=100",
        "data.eval_size=0",
        "train.report_to=none",
        "train.max_grad_norm=1.0",
    ]
    cfg = tiny(codes_dir, tmp_path / "big", *common, "train.batch_size=4")
    train(cfg)
    reset_accelerate()
    train(tiny(codes_dir, tmp_path / "acc", *common, "train.batch_size=2", "train.gradient_accumulation_steps=2"))
    big, acc = weights(tmp_path / "big"), weights(tmp_path / "acc")
    initial = build_model(cfg.model).state_dict()
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-5, atol=1e-6, msg=key)
        assert not torch.equal(big[key], initial[key]), f"{key} did not train"


# Any later evaluation counts as no improvement, so patience 1 stops at the second evaluation.
STOP_AT_SECOND_EVAL = ["eval.early_stopping_patience=1", "eval.early_stopping_min_delta=100"]
SAMPLES = [
    "samples.every=2",
    "samples.max_seconds=0.3",
    'samples.prompts=[{name: plan, text: "[S1] Ready to plan the trip?", seed: 3}, '
    '{name: clone, audio: data/sample/audio/utt_001.flac, transcript: "[S2] Yes, I have the map right here.", '
    'text: "[S2] The map again."}]',
]
SAMPLE_FILES = ["clone.png", "clone.wav", "index.json", "plan.png", "plan.wav"]


def test_two_processes_train_evaluate_and_save(codes_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        *two_process_launch(29541),
        str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *TINY,
        f"data.dataset={codes_dir}",
        f"output.dir={run_dir}",
        "train.max_steps=8",
        "train.save_every=8",
        "eval.eval_every=2",
        "data.eval_size=5",
        *STOP_AT_SECOND_EVAL,
        *SAMPLES,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stdout
    # Both processes took the same early-stopping decision (otherwise one would wait for the other forever)
    # and met the main process after its samples.
    assert "early stop at step 4" in done.stdout
    ckpt = run_dir / "checkpoints" / "step_4"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert (run_dir / "best" / "random_states_1.pkl").is_file()
    assert (run_dir / "final" / "model.safetensors").is_file()
    for step in ("step_000002", "step_000004"):
        assert sorted(p.name for p in (run_dir / "samples" / step).iterdir()) == SAMPLE_FILES

    # The eval loss gathered over 2 processes (5 items: the last batch is padded with repeats) equals a
    # single-process evaluation of the same weights.
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from dia_tpu.data.batching import make_collator
    from dia_tpu.data.dataset import load_splits
    from dia_tpu.families.dia.loss import DiaScorer, codebook_weights
    from dia_tpu.training.evaluate import evaluate

    cfg = load(ckpt / "config.yaml")
    model = DiaForConditionalGeneration.from_pretrained(ckpt)
    splits = load_splits(cfg)
    loader = DataLoader(splits.eval, batch_size=2, collate_fn=make_collator(cfg.data, model.config, fill_to=2))
    accelerator = Accelerator(cpu=True)
    metrics = evaluate(
        accelerator, accelerator.prepare(model), accelerator.prepare(loader), DiaScorer(codebook_weights([], 9))
    )
    logged = dict(scalars(run_dir)["eval/loss"])
    assert logged[4] == pytest.approx(metrics["eval/loss"], rel=1e-5)
    assert metrics["eval/tokens"] > 0


def test_two_processes_equal_one_with_accumulation(codes_dir, tmp_path):
    """Two DDP processes of batch B take the same optimizer steps as one process accumulating 2 x B: process
    p gets batches p, p + 2, ... of the same seeded order, and the loss is normalised over the whole step."""
    common = [*TINY, f"data.dataset={codes_dir}", "train.max_steps=4", "data.eval_size=0", "train.report_to=none"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        *two_process_launch(29542),
        str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *common,
        f"output.dir={tmp_path / 'ddp'}",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    train(
        load(
            ROOT / "configs/demo.yaml",
            [*common, "train.gradient_accumulation_steps=2", f"output.dir={tmp_path / 'one'}"],
        )
    )
    two, one = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_samples_are_written_logged_and_do_not_change_training(codes_dir, tmp_path):
    common = ["train.max_steps=4", "train.save_every=100", "data.eval_size=0"]
    train(tiny(codes_dir, tmp_path / "plain", *common))
    reset_accelerate()
    run_dir = tmp_path / "sampled"
    final = train(tiny(codes_dir, run_dir, *common, *SAMPLES))

    # Sampling draws from its own generators and restores the model's mode: training is bit-identical.
    plain, sampled = weights(tmp_path / "plain"), weights(run_dir)
    for key in plain:
        assert torch.equal(plain[key], sampled[key]), key
    for step in (2, 4):
        folder = run_dir / "samples" / f"step_{step:06d}"
        assert sorted(p.name for p in folder.iterdir()) == SAMPLE_FILES
        index = {entry["name"]: entry for entry in json.loads((folder / "index.json").read_text())}
        assert index["plan"]["seed"] == 3 and index["clone"]["audio_prompt"].endswith("utt_001.flac")
    acc = EventAccumulator(str(next((run_dir / "logs").iterdir())), size_guidance={"audio": 0, "images": 0})
    acc.Reload()
    assert {"samples/plan", "samples/clone"} <= set(acc.Tags()["audio"])
    assert {"spectrograms/plan", "spectrograms/clone"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Audio("samples/plan")] == [2, 4]

    # A sample is a function of the weights, the prompt and its seed: the export regenerates step 4's.
    cfg = load(run_dir / "config.yaml")
    model, codec = load_for_inference(str(final))
    # The demo's guidance and temperature; top_p and top_k unset, so Dia's published ones, generate's defaults.
    s = cfg.samples
    assert s.top_p is None and s.top_k is None
    settings = GenerationSettings(guidance_scale=s.guidance_scale, temperature=s.temperature, seed=3, max_seconds=0.3)
    [again] = synthesize(model, codec, [cfg.samples.prompts[0].text], settings)
    sf.write(tmp_path / "again.wav", again, codec.config.sampling_rate)
    written, _ = sf.read(run_dir / "samples" / "step_000004" / "plan.wav")
    assert np.array_equal(sf.read(tmp_path / "again.wav")[0], written)


def test_best_checkpoint_and_early_stopping(codes_dir, tmp_path, capsys):
    run_dir = tmp_path / "stop"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=40",
            "train.save_every=2",
            "train.keep_last=5",
            "eval.eval_every=2",
            "eval.early_stopping_patience=2",
            "eval.early_stopping_min_delta=100",
            "eval.eval_on_start=true",
        )
    )
    out = capsys.readouterr().out
    assert "early stop at step 6: no eval-loss improvement in 2 evaluations (best" in out
    assert [p.name for p in RunFolder(run_dir).list_checkpoints()] == ["step_2", "step_4", "step_6"]
    assert max(step for step, _ in scalars(run_dir)["train/loss"]) == 6
    # The evaluation before the first step is logged at step 0 and does not count for best/ or patience.
    assert re.search(r"step 0: eval loss \d+\.\d{4} before training", out)
    assert [step for step, _ in scalars(run_dir)["eval/loss"]] == [0, 2, 4, 6]
    # best/ is the whole state of the first evaluation's step, and stays beside the rotating checkpoints.
    best, step_2 = saved_model(run_dir / "best"), saved_model(run_dir / "checkpoints" / "step_2")
    assert best.keys() == step_2.keys()
    for key, value in best.items():
        assert torch.equal(value, step_2[key]), key
    state = json.loads((run_dir / "best" / "train_state.json").read_text())
    assert state["step"] == 2 and state["best_step"] == 2 and state["evals_since_best"] == 0
    assert (run_dir / "final" / "model.safetensors").is_file()


def saved_model(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint: safetensors, or torch.save on XLA."""
    if (checkpoint / "model.safetensors").is_file():
        return load_file(checkpoint / "model.safetensors")
    return torch.load(checkpoint / "pytorch_model.bin", weights_only=True)


@pytest.mark.skipif(ON_XLA, reason="generate runs on the CPU or a GPU, never the XLA device: once is enough")
def test_generate_cli_writes_wav(codes_dir, tmp_path):
    run_dir = tmp_path / "gen"
    final = train(tiny(codes_dir, run_dir, "train.max_steps=2", "train.report_to=none", "data.eval_size=0"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def generate(model: Path, wav: Path) -> None:
        # Run from a folder that is neither the repository nor the run's: nothing may depend on the cwd.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dia_tpu",
                "generate",
                "--model",
                str(model),
                "--text",
                "[S1] Hello. [S2] Hi!",
                "--out",
                str(wav),
                "--max-seconds",
                "0.5",
                "--seed",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=elsewhere,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr == "", done.stderr[-3000:]  # no third-party warnings or bars, only dia_tpu's lines
        # The run's samples.* (the demo config's guidance 1.0, temperature 0.7): a checkpoint's as its export's.
        said = done.stdout.splitlines()
        assert said[0] == "sampling: guidance_scale 1.0, temperature 0.7, top_p 0.9, top_k 45, greedy False, seed 3"
        assert said[1].startswith(f"wrote {wav} (")

    out, from_checkpoint, moved_wav = tmp_path / "hello.wav", tmp_path / "from_checkpoint.wav", tmp_path / "moved.wav"
    generate(final, out)
    generate(run_dir / "checkpoints" / "step_2", from_checkpoint)
    wave, rate = sf.read(out)
    assert rate == 44100
    assert 0 < len(wave) <= 0.5 * 44100 + 512
    assert wave.ndim == 1
    # A checkpoint folder loads for generation too (its codec comes from its config.yaml).
    assert np.array_equal(sf.read(from_checkpoint)[0], wave)

    # The export moved to another place (as if copied to another machine), its saved config naming a sample
    # prompt by a relative path that resolves nowhere: it still generates the same audio.
    moved = shutil.move(final, tmp_path / "copied" / "model")
    saved = Path(moved) / "config.yaml"
    saved.write_text(re.sub(r"audio: /\S+", "audio: prompts/utt_000.flac", saved.read_text()))
    assert "audio: prompts/utt_000.flac" in saved.read_text()
    generate(Path(moved), moved_wav)
    assert np.array_equal(sf.read(moved_wav)[0], wave)

    # `export` turns a checkpoint into the same loadable folder.
    exported = tmp_path / "exported"
    main(["export", "--checkpoint", str(run_dir / "checkpoints" / "step_2"), "--out", str(exported)])
    a = load_file(exported / "model.safetensors")
    b = load_file(Path(moved) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_bad_input_fails_before_any_work(codes_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_codes"):
        train(tiny(tmp_path / "missing_codes", tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="no_such_ckpt"):
        train(tiny(codes_dir, tmp_path / "b", f"train.resume={tmp_path / 'no_such_ckpt'}"))
    # A voice prompt's audio is needed when a run starts, not when its saved config is read back.
    prompt = "samples.prompts=[{name: v, text: hi, audio: no_such.wav, transcript: hi}]"
    with pytest.raises(ConfigError, match="samples.prompts.0..audio: file not found: .*no_such.wav"):
        train(tiny(codes_dir, tmp_path / "e", prompt))
    assert not any((tmp_path / name).exists() for name in "abe")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match=r"train.optimizer=adamw_8bit"):
            train(tiny(codes_dir, tmp_path / "d", "train.optimizer=adamw_8bit"))
        reset_accelerate()
        assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match=r"train.learnig_rate.*valid keys: .*learning_rate"):
        tiny(codes_dir, tmp_path / "c", "train.learnig_rate=1e-4")
    if ON_XLA:
        return  # a command's one-line error is the same in either environment: its own process once is enough
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "train",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            "data.max_audio_frame=3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "data.max_audio_frame" in done.stderr and "max_audio_frames" in done.stderr


@pytest.mark.skipif(
    ON_XLA,
    reason="model.compile is off on XLA; bf16, resuming and accumulation there are test_xla.py's (bf16 training, "
    "resume, accumulation with checkpointing)",
)
def test_speed_options_keep_resume_exact_and_accumulation_equal(codes_dir, tmp_path):
    """Every speed option on (compiled model, fused AdamW, bf16 autocast): a resumed run still ends on the
    straight run's weights bit for bit; and with fused AdamW and bf16, the options that change how micro-batches
    add up, two micro-batches of 2 still make one step of 4 (those three runs uncompiled: compiling is most of
    this test's time)."""
    fast = [
        "model.compile=true",
        "train.fused_optimizer=true",
        "train.mixed_precision=bf16",
        "data.eval_size=0",
        "train.report_to=none",
    ]
    train(tiny(codes_dir, tmp_path / "straight", *fast, "train.max_steps=4", "train.save_every=2"))
    reset_accelerate()
    ckpt = tmp_path / "straight" / "checkpoints" / "step_2"
    train(
        tiny(codes_dir, tmp_path / "resumed", *fast, "train.max_steps=4", "train.save_every=2", f"train.resume={ckpt}")
    )
    reset_accelerate()
    expected, got = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)

    common = [*fast[1:], "train.max_steps=2", "train.save_every=100", "train.max_grad_norm=1.0"]
    runs = {
        "big": ["train.batch_size=4"],
        "acc": ["train.batch_size=2", "train.gradient_accumulation_steps=2"],
        "second_dropped": ["train.batch_size=2"],
    }  # each step without its second micro-batch of 2
    for name, batch in runs.items():
        cfg = tiny(codes_dir, tmp_path / name, *common, *batch)
        train(cfg)
        reset_accelerate()
    start, big = build_model(cfg.model).state_dict(), weights(tmp_path / "big")
    moved = _distance(big, start)
    # bf16 products of 2 rows and of 4 round apart a little (the fp32 runs above agree to 1e-5), so the runs are
    # compared by how far apart they end against how far training moved the weights: measured 0.2 % for 2 x 2
    # against 4, and 67 % when each step loses its second micro-batch, which the tolerance must and does catch.
    assert _distance(weights(tmp_path / "acc"), big) < 0.05 * moved
    assert _distance(weights(tmp_path / "second_dropped"), big) > 0.3 * moved


def _distance(a: dict, b: dict) -> float:
    """The Euclidean distance between two sets of weights (fp32), over all their tensors."""
    return math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a))


@pytest.mark.skipif(
    ON_XLA,
    reason="on XLA the recomputation compiles into other "
    "kernels and rounds apart a little: test_xla.py checks it there, within tolerance",
)
@pytest.mark.parametrize("adapters", [[], ["model.lora.rank=4", "model.lora.alpha=8", "train.learning_rate=5e-3"]])
def test_gradient_checkpointing_changes_memory_not_weights(codes_dir, tmp_path, adapters):
    """model.gradient_checkpointing recomputes each layer's activations in the backward pass: the trained weights
    are the plain run's bit for bit, full fine-tuning and LoRA alike, and transformers' notes about a cache and
    about input embeddings to hook (neither applies to the non-reentrant checkpointing used) stay out of the
    output."""
    notes = []
    catcher = logging.Handler()
    catcher.emit = lambda record: notes.append(record.getMessage())
    logging.Logger.warning_once.cache_clear()  # transformers says each note once per process
    logging.getLogger("transformers").addHandler(catcher)
    try:
        for checkpointing in ("false", "true"):
            train(
                tiny(
                    codes_dir,
                    tmp_path / checkpointing,
                    "train.max_steps=3",
                    "train.save_every=100",
                    "data.eval_size=0",
                    "train.report_to=none",
                    f"model.gradient_checkpointing={checkpointing}",
                    *adapters,
                )
            )
            reset_accelerate()
    finally:
        logging.getLogger("transformers").removeHandler(catcher)
    plain, checkpointed = weights(tmp_path / "false"), weights(tmp_path / "true")
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=0, atol=0, msg=key)
    assert not [note for note in notes if "input embeddings" in note or "Caching is incompatible" in note], notes
