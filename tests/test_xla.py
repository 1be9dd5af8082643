"""The XLA path on torch_xla's CPU device: what a TPU run relies on, checked without a TPU.

These tests run in the torch_xla environment (`make test-xla`, part of `make test`) and are skipped
where torch_xla is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

torch_xla = pytest.importorskip("torch_xla")
if not os.environ.get("PJRT_DEVICE"):
    pytest.skip("set PJRT_DEVICE=CPU to run the XLA tests", allow_module_level=True)

from accelerate.state import PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from conftest import RANDOM_CODEC, ROOT, TINY, reset_accelerate, scalars, tiny, weights  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dia_tpu.config import ConfigError, load  # noqa: E402
from dia_tpu.data.audio import encode, load_audio  # noqa: E402
from dia_tpu.model.codec import build_codec, codec_on_accelerator  # noqa: E402
from dia_tpu.training.recipe import train  # noqa: E402


@pytest.fixture(scope="module")
def straight_run(codes_dir, tmp_path_factory) -> Path:
    """30 steps on XLA with logging every 5, evaluation and a checkpoint every 10."""
    run_dir = tmp_path_factory.mktemp("xla") / "straight"
    before = len(compile_seconds())
    # Evaluations at steps that do not log: the pending step must not run inside the first eval batch's graph.
    train(
        tiny(codes_dir, run_dir, "train.max_steps=30", "train.save_every=10", "train.keep_last=3", "eval.eval_every=7")
    )
    assert PartialState().distributed_type == DistributedType.XLA
    reset_accelerate()
    (run_dir.parent / "compile_seconds.json").write_text(json.dumps(compile_seconds()[before:]))
    return run_dir


def compile_seconds() -> list[float]:
    """How long each compilation of this process took, in order (torch_xla keeps every sample)."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return [nanoseconds / 1e9 for _, nanoseconds in data[2]] if data else []


def test_compilations_stop_after_warm_up_and_steps_never_sync(straight_run):
    logged = scalars(straight_run)
    compiles = dict(logged["xla/compiles"])
    # Warm-up: the first train step and the steady one, the evaluation's forward, and small graphs (the logged
    # window's reduction and reset, the evaluation's sums). The first evaluation comes at step 7; after it,
    # logging (every 5 steps), evaluations and checkpoints compile nothing new.
    assert compiles[10] == compiles[15] == compiles[20] == compiles[25] == compiles[30]
    # The train step is compiled twice: the first step (no optimizer state yet) and every other one, logging
    # steps and the steps after an evaluation included. Graphs of a train step's size take seconds to compile;
    # the evaluation's forward about 40 % of that, the small graphs milliseconds.
    seconds = json.loads((straight_run.parent / "compile_seconds.json").read_text())
    assert len([s for s in seconds if s > 0.7 * max(seconds)]) == 2, seconds
    assert compiles[30] <= 12
    assert all(value == 0 for _, value in logged["xla/train_step_host_syncs"])
    assert all(value == 0 for _, value in logged["xla/train_step_host_transfers"])
    assert logged["xla/compile_seconds"][-1][1] > 0


def test_resume_on_xla_continues_exactly(straight_run, codes_dir, tmp_path):
    ckpt = straight_run / "checkpoints" / "step_20"
    assert (ckpt / "pytorch_model.bin").is_file()
    train(
        tiny(
            codes_dir,
            tmp_path / "resumed",
            "train.max_steps=30",
            "train.save_every=10",
            "eval.eval_every=7",
            f"train.resume={ckpt}",
        )
    )
    reset_accelerate()
    expected, got = weights(straight_run), weights(tmp_path / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_accumulation_and_checkpointing_on_xla_match_one_plain_batch(codes_dir, tmp_path):
    common = ["train.max_steps=3", "train.save_every=100", "data.eval_size=0", "train.report_to=none"]
    train(tiny(codes_dir, tmp_path / "big", *common, "train.batch_size=4"))
    reset_accelerate()
    train(tiny(codes_dir, tmp_path / "acc", *common, "train.batch_size=2", "train.gradient_accumulation_steps=2"))
    reset_accelerate()
    # Gradient checkpointing (torch_xla's: torch's fails on XLA tensors) recomputes the same step.
    train(tiny(codes_dir, tmp_path / "ckpt", *common, "train.batch_size=4", "model.gradient_checkpointing=true"))
    reset_accelerate()
    big, acc, ckpt = weights(tmp_path / "big"), weights(tmp_path / "acc"), weights(tmp_path / "ckpt")
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(ckpt[key], big[key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_trains_on_xla(codes_dir, tmp_path):
    cfg = tiny(
        codes_dir,
        tmp_path / "bf16",
        "train.max_steps=6",
        "train.save_every=100",
        "train.log_every=3",
        "train.mixed_precision=bf16",
    )
    train(cfg)
    reset_accelerate()
    losses = [v for _, v in scalars(tmp_path / "bf16")["train/loss"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    exported = load_file(tmp_path / "bf16" / "final" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in exported.values())  # fp32 master weights


def test_codes_on_xla_equal_cpu_codes():
    cfg = load(ROOT / "configs/demo.yaml", RANDOM_CODEC)
    waves = [load_audio(ROOT / "data/sample/audio" / f"utt_00{i}.flac", 44100) for i in range(3)]
    cpu_codec = build_codec(cfg.model)
    xla_codec = codec_on_accelerator(build_codec(cfg.model), torch_xla.device())
    assert next(xla_codec.parameters()).device.type == "xla"
    for wave in waves:
        np.testing.assert_array_equal(encode(xla_codec, [wave])[0], encode(cpu_codec, [wave])[0])


def test_8bit_optimizer_on_xla_is_a_config_error(codes_dir, tmp_path):
    with pytest.raises(ConfigError, match="adamw_8bit.*XLA"):
        train(tiny(codes_dir, tmp_path / "bnb", "train.optimizer=adamw_8bit"))
    reset_accelerate()
    assert not (tmp_path / "bnb").exists()


def test_shipped_tpu_accelerate_config_launches(codes_dir, tmp_path):
    """The TPU launcher (one process here: XLA:CPU has one device) runs main() and the main process reports."""
    run_dir = tmp_path / "launched"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "configs/accelerate/tpu.yaml"),
            "--num_processes",
            "1",
            str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
            "--config",
            str(ROOT / "configs/demo.yaml"),
            *TINY,
            f"data.dataset={codes_dir}",
            f"output.dir={run_dir}",
            "train.max_steps=2",
            "train.report_to=none",
        ],
        env={k: v for k, v in os.environ.items() if k != "LOCAL_RANK"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 optimizer steps on 1 process(es)" in done.stdout
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_samples_can_be_switched_off_on_xla(codes_dir, tmp_path, capsys):
    # With the default samples.on_xla=cpu, test_train.py's samples test runs here on a CPU copy of the weights.
    run_dir = tmp_path / "quiet"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=2",
            "train.report_to=none",
            "data.eval_size=0",
            "samples.every=1",
            "samples.on_xla=skip",
            'samples.prompts=[{name: hi, text: "[S1] Hi."}]',
        )
    )
    assert "samples: off on XLA (samples.on_xla=skip)" in capsys.readouterr().out
    assert not (run_dir / "samples").exists()


def test_audio_is_judged_on_xla_from_a_cpu_copy(codes_dir, tmp_path):
    run_dir = tmp_path / "judged"
    train(
        tiny(
            codes_dir,
            run_dir,
            "train.max_steps=2",
            "eval.eval_every=2",
            "eval.audio.every=2",
            "eval.audio.limit=2",
            "eval.audio.max_seconds=0.5",
            "eval.audio.speaker=none",
        )
    )
    logged = scalars(run_dir)
    assert logged["audio/utterances"] == [(2, 2.0)] and "audio/wer" in logged
    rows = (run_dir / "evaluations" / "step_000002" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 2  # the main process judged them all


def test_dia2_train_step_compiles_once_and_matches_cpu():
    """Dia2's one-pass training step on XLA: after the first two steps (no optimizer state, then with it) the
    steps compile nothing new, and the first step's loss is the CPU one's."""
    import copy

    import torch_xla.core.xla_model as xm
    from test_dia2 import FIXTURES, _example
    from test_dia2 import TINY as DIA2

    from dia_tpu.families.dia2.files import read_model
    from dia_tpu.families.dia2.loss import dia2_loss

    case = json.loads((FIXTURES / "script.json").read_text())
    cpu = read_model(DIA2)
    examples = [_example(cpu, case, seed=s)[-1] for s in (0, 1)]
    batch = [torch.stack([getattr(e, k) for e in examples]) for k in ("tokens", "actions", "action_mask", "audio_mask")]
    device = torch_xla.device()
    model = copy.deepcopy(cpu).to(device)
    on_device = [t.to(device) for t in batch]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    compiles, losses = [], []
    for _ in range(6):
        parts = dia2_loss(model(on_device[0]), *on_device)
        loss = parts.weighted_sum / parts.total_weight
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        xm.mark_step()
        losses.append(loss.item())
        compiles.append(len(compile_seconds()))
    assert compiles[2] == compiles[5], compiles
    # Control: a grid one frame shorter is another shape, and the counter sees its compilation.
    shorter = [on_device[0][..., :-1], on_device[1][:, :-1], on_device[2][:, :-1], on_device[3][..., :-1]]
    parts = dia2_loss(model(shorter[0]), *shorter)
    (parts.weighted_sum / parts.total_weight).backward()
    xm.mark_step()
    assert len(compile_seconds()) > compiles[5]
    reference = dia2_loss(cpu(batch[0]), *batch)
    assert abs(losses[0] - (reference.weighted_sum / reference.total_weight).item()) < 1e-4
    assert losses[-1] < losses[0]


def test_dia2_trains_through_the_entry_point_on_xla_as_on_the_cpu(dia2_model, dia2_codes, tmp_path):
    """Dia2 through `train` on XLA: the same weights as the same run on the CPU (in a process where Accelerate
    ignores torch_xla), few compilations (fixed shapes, as for Dia), and with gradient checkpointing the same
    steps again."""
    from test_dia2_train import dia2_config

    from dia_tpu.families.dia2.files import read_model

    common = ["train.max_steps=8", "train.save_every=100", "eval.eval_every=4", "train.log_every=4"]
    cfg = dia2_config(dia2_model, dia2_codes, tmp_path / "cpu", *common, "samples.every=8")
    cfg.save(tmp_path / "cpu.yaml")
    subprocess.run(
        [sys.executable, "-m", "dia_tpu.cli", "train", "--config", str(tmp_path / "cpu.yaml")],
        env={**os.environ, "USE_TORCH_XLA": "0"},
        check=True,
        capture_output=True,
    )
    before = len(compile_seconds())
    # With a sample at the end, generated from a CPU copy of the weights: no step of it compiles on XLA.
    train(dia2_config(dia2_model, dia2_codes, tmp_path / "xla", *common, "samples.every=8"))
    assert PartialState().distributed_type == DistributedType.XLA
    assert sf.info(tmp_path / "xla/samples/step_000008/talk.wav").frames > 0
    reset_accelerate()
    on_xla, on_cpu = weights(tmp_path / "xla"), weights(tmp_path / "cpu")
    assert on_xla.keys() == on_cpu.keys()
    for key in on_cpu:
        torch.testing.assert_close(on_xla[key], on_cpu[key], rtol=1e-4, atol=1e-4, msg=key)
    # Control: the CPU run's weights moved far more than the tolerance from the base model's.
    base = read_model(dia2_model).state_dict()
    assert max((on_cpu[k] - base[k]).abs().max().item() for k in base) > 1e-2
    losses = [v for _, v in scalars(tmp_path / "xla")["eval/loss"]]
    assert losses[-1] < losses[0]
    assert len(compile_seconds()) - before <= 12
    # Gradient checkpointing (torch_xla's) recomputes the same steps.
    train(dia2_config(dia2_model, dia2_codes, tmp_path / "ckpt", *common, "model.gradient_checkpointing=true"))
    reset_accelerate()
    recomputed = weights(tmp_path / "ckpt")
    for key in on_xla:
        torch.testing.assert_close(recomputed[key], on_xla[key], rtol=1e-4, atol=1e-5, msg=key)


def test_dia2_generates_on_xla_the_codes_it_generates_on_the_cpu(dia2_model):
    """Dia2's own generation on the XLA device: greedy codes equal the CPU's, and once its graphs are compiled
    a second script compiles nothing (a fixed set of graphs, not one per frame)."""
    import torch_xla

    from dia_tpu.families.dia2.assets import load_tokenizer, text_ids
    from dia_tpu.families.dia2.decode import Dia2Sampling, generate
    from dia_tpu.families.dia2.files import read_model
    from dia_tpu.families.dia2.script import script_entries

    model = read_model(dia2_model).eval()
    tokenizer = load_tokenizer(dia2_model, model.config)
    ids = text_ids(model.config, tokenizer)

    def script(text):
        return script_entries(text, lambda t: tokenizer.encode(t, add_special_tokens=False), ids, 12.5)

    greedy = Dia2Sampling(temperature=0, text_temperature=0, guidance_top_k=8)
    on_device = read_model(dia2_model).eval().to(torch_xla.device())
    first, second = script("[S1] hello there [S2] hi again friend"), script("[S2] friend [S1] hi there hello")
    assert torch.equal(generate(on_device, first, ids, greedy).codes.cpu(), generate(model, first, ids, greedy).codes)
    before = len(compile_seconds())
    again = generate(on_device, second, ids, greedy).codes.cpu()
    assert len(compile_seconds()) == before
    expected = generate(model, second, ids, greedy).codes
    assert torch.equal(again, expected)
    # Control: the two scripts' codes differ, so equality above is not two empty or constant outputs.
    assert not torch.equal(expected[:, :10], generate(model, first, ids, greedy).codes[:, :10])
