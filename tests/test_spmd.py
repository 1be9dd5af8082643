"""Sharded training on XLA (`train.sharding=fsdp`): SPMD over 4 virtual devices of torch_xla's CPU device, each
run in a process of its own, against the same run on one device.

These tests run in the torch_xla environment (`make test-xla`) and are skipped where torch_xla is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch_xla = pytest.importorskip("torch_xla")

from conftest import ROOT, TINY, scalars, weights  # noqa: E402
from helpers.spmd_run import SHARDED  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import DiaForConditionalGeneration  # noqa: E402


def run(cmd: list[str], dump: Path, **env: str) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CPU_NUM_DEVICES", "XLA_FLAGS")},
        "PJRT_DEVICE": "CPU",
        "LOCAL_RANK": "0",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
        "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text",
        **env,
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(codes_dir, tmp_path_factory) -> Path:
    """The sharded runs and probe (tests/helpers/spmd_run.py) on 4 devices, and the same training on one."""
    out = tmp_path_factory.mktemp("spmd")
    run(
        [sys.executable, str(ROOT / "tests/helpers/spmd_run.py"), str(codes_dir), str(out)],
        out / "dump_sharded",
        CPU_NUM_DEVICES="4",
    )
    unsharded = [o for o in SHARDED if o != "train.sharding=fsdp"]
    run(
        [
            sys.executable,
            "-m",
            "dia_tpu.finetune_acc_tpu",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            *TINY,
            f"data.dataset={codes_dir}",
            f"output.dir={out / 'one'}",
            *unsharded,
        ],
        out / "dump_one",
    )
    return out


def all_four(spec: str) -> bool:
    """An XLA sharding that splits a tensor over all 4 devices (e.g. `{devices=[4,1]0,1,2,3}`)."""
    return bool(re.fullmatch(r"\{devices=\[(?:1,)*4(?:,1)*\]0,1,2,3\}", spec))


def test_parameters_gradients_and_optimizer_state_are_split_over_every_device(runs):
    probe = json.loads((runs / "probe.json").read_text())
    for part in ("parameters", "gradients", "optimizer", "optimizer_resharded", "parameters_loaded"):
        unsplit = {name: spec for name, spec in probe[part].items() if not all_four(spec)}
        assert probe[part] and not unsplit, (part, unsplit)
    # What the workaround is for: Accelerate's load_state hands the optimizer state back replicated.
    assert not any(all_four(spec) for spec in probe["optimizer_loaded"].values())


def test_sharded_run_takes_the_steps_of_one_device(runs):
    sharded, one = scalars(runs / "sharded"), scalars(runs / "one")
    for tag in ("train/loss", "eval/loss"):
        assert [s for s, _ in sharded[tag]] == [s for s, _ in one[tag]]
        # Sums over the batch split over 4 devices add in another order: fp32 rounding, nothing more.
        assert [v for _, v in sharded[tag]] == pytest.approx([v for _, v in one[tag]], rel=1e-5)
    expected, got = weights(runs / "one"), weights(runs / "sharded")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=5e-5, msg=key)


def test_resume_continues_exactly(runs):
    expected, got = weights(runs / "sharded"), weights(runs / "resumed")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_export_is_the_trained_model_unsharded(runs):
    final = runs / "sharded" / "final"
    saved = torch.load(runs / "sharded" / "checkpoints" / "step_8" / "pytorch_model.bin", weights_only=True)
    assert load_file(final / "model.safetensors").keys() == saved.keys()  # no wrapper prefixes
    exported = DiaForConditionalGeneration.from_pretrained(final).state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    assert sorted(p.name for p in (runs / "sharded" / "samples" / "step_000008").iterdir()) == [
        "hi.png",
        "hi.wav",
        "index.json",
    ]  # generated from a CPU copy of the sharded weights


def test_no_compilation_after_warm_up_and_no_host_syncs_in_steps(runs):
    logged = scalars(runs / "sharded")
    compiles = dict(logged["xla/compiles"])
    # The first checkpoint (step 2) compiles the graphs that gather the shards to the host, the first evaluation
    # (step 4) its own; the later checkpoints (4, 6) and steps compile nothing.
    assert compiles[3] == compiles[4]
    assert compiles[5] == compiles[6] == compiles[7] == compiles[8]
    assert compiles[8] - compiles[1] <= 10
    assert all(value == 0 for _, value in logged["xla/train_step_host_syncs"])


def peak_program_bytes(dump: Path) -> int:
    """The largest per-device memory of the compiled step programs, from XLA's memory-usage reports."""
    sizes = [int(f.read_text().split()[3]) for f in dump.glob("*SyncTensorsGraph*memory-usage-report.txt")]
    assert sizes, f"no memory-usage reports in {dump}"
    return max(sizes)


def test_each_device_needs_at_most_half_the_memory_of_one_device(runs):
    sharded, one = peak_program_bytes(runs / "dump_sharded"), peak_program_bytes(runs / "dump_one")
    assert sharded <= 0.5 * one, (sharded, one)


def test_several_processes_per_host_are_refused_before_spmd_starts(monkeypatch):
    """`accelerate launch --num_processes 4` on a TPU host spawns 4 processes; under SPMD each would drive all
    the chips and train a copy of its own."""
    from dia_tpu.config import ConfigError, load
    from dia_tpu.training.sharding import Sharding

    monkeypatch.setenv("PJRT_LOCAL_PROCESS_COUNT", "4")
    with pytest.raises(ConfigError, match="this host started 4"):
        Sharding.before_accelerator(load(ROOT / "configs/demo.yaml", [*TINY, "train.sharding=fsdp"]))
    assert os.environ.get("XLA_USE_SPMD") is None  # SPMD was not switched on in this process


def test_a_batch_that_does_not_split_over_the_devices_is_one_clear_error(codes_dir, tmp_path):
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4", "LOCAL_RANK": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu.finetune_acc_tpu",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            *TINY,
            f"data.dataset={codes_dir}",
            f"output.dir={tmp_path / 'run'}",
            "train.sharding=fsdp",
            "train.batch_size=2",
            "eval.batch_size=4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "train.batch_size=2: under SPMD it is the batch of one host, split over its 4 devices" in done.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_dia2_sharded_over_four_devices_takes_the_steps_of_one_device(dia2_model, dia2_codes, tmp_path):
    """SPMD on Dia2: the backbone and depformer layers the units, parameters split over the 4 devices, the same
    weights after four steps with checkpoints and evaluations between them as one device: the CPU, without
    torch_xla (test_xla.py shows one XLA device training Dia2 as the CPU does)."""
    from test_dia2_train import dia2_config

    from dia_tpu.families.dia2.files import read_model

    steps = ["train.max_steps=4", "train.save_every=2", "eval.eval_every=2", "data.eval_size=8", "train.log_every=1"]
    for name, extra in (("sharded", ["train.sharding=fsdp"]), ("one", [])):
        dia2_config(dia2_model, dia2_codes, tmp_path / name, *steps, *extra).save(tmp_path / f"{name}.yaml")
    command = [sys.executable, "-m", "dia_tpu.finetune_acc_tpu", "--config"]
    said = run([*command, str(tmp_path / "sharded.yaml")], tmp_path / "dump_sharded", CPU_NUM_DEVICES="4")
    line = re.search(r"sharding: SPMD over 4 devices .* each holding ([\d.]+) M of the ([\d.]+) M", said)
    assert line and float(line[1]) < 0.3 * float(line[2]), said[-2000:]
    plain = {k: v for k, v in os.environ.items() if k not in ("CPU_NUM_DEVICES", "XLA_FLAGS", "LOCAL_RANK")}
    done = subprocess.run(
        [*command, str(tmp_path / "one.yaml")], env={**plain, "USE_TORCH_XLA": "0"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sharded, one = weights(tmp_path / "sharded"), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(sharded[key], one[key], rtol=1e-4, atol=1e-4, msg=key)
    base = read_model(dia2_model).state_dict()
    assert max((one[k] - base[k]).abs().max().item() for k in base) > 1e-3  # the steps moved the weights
    assert (tmp_path / "sharded/checkpoints/step_2").is_dir()
    assert [s for s, _ in scalars(tmp_path / "sharded")["eval/loss"]] == [2, 4]
