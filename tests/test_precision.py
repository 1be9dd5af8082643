"""Which precision is fast: the CPU's features read from the kernel, `auto`'s pick, the warning before a run
that would be tens of times slower, and the bench's rows on such a CPU."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

import dia_tpu.precision as precision
from dia_tpu.bench.train import bench, format_table
from dia_tpu.config import load
from dia_tpu.precision import CpuFeatures, choose, cpu_features

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd asimdhp sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd asimdhp\n"
WITHOUT = CpuFeatures("x86", frozenset({"avx2"}))
WITH = CpuFeatures("x86", frozenset({"avx2", "amx_bf16"}))


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "bf16", "fp16"),
    [
        (ZEN3, "x86_64", False, False),
        (SAPPHIRE, "x86_64", True, True),
        (GRAVITON3, "aarch64", True, True),
        (GRAVITON2, "aarch64", False, True),
        ("processor\t: 0\n", "x86_64", None, None),  # no flags line: not known
        (ZEN3, "riscv64", None, None),  # an architecture without a table
    ],
)
def test_native_matrix_instructions_are_read_from_the_kernels_flags(cpuinfo, machine, bf16, fp16):
    features = cpu_features(cpuinfo, machine)
    assert (features.native("bf16"), features.native("fp16")) == (bf16, fp16)


def test_this_machines_cpu_is_read():
    features = cpu_features()
    assert features.flags is not None and features.native("bf16") in (True, False)


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    picked = choose("auto", "cpu", "train.mixed_precision", WITH)
    assert picked.precision == "bf16" and not picked.slow
    assert picked.note == "train.mixed_precision=auto: bf16, this CPU has amx_bf16"
    fallen = choose("auto", "cpu", "train.mixed_precision", WITHOUT)
    assert fallen.precision == "no" and not fallen.slow
    assert re.fullmatch(
        r"train\.mixed_precision=auto: fp32, as this CPU has no avx512_bf16 or amx_bf16 \(a bf16 matmul took \d+ "
        r"times as long as an fp32 one here\)",
        fallen.note,
    ), fallen.note
    # Flags the kernel does not give (macOS): fp32, the safe pick every process makes alike.
    assert choose("auto", "cpu", "train.mixed_precision", CpuFeatures("x86", None)).precision == "no"


def test_bf16_asked_for_on_a_cpu_without_it_warns_with_the_feature_the_cost_and_the_setting():
    warned = choose("bf16", "cpu", "train.mixed_precision", WITHOUT)
    assert warned.precision == "bf16" and warned.slow  # what was asked for is kept
    assert warned.note.startswith("warning: train.mixed_precision=bf16, but this CPU has no avx512_bf16 or amx_bf16")
    assert "train.mixed_precision=no (or auto) runs in fp32" in warned.note
    times = float(re.search(r"took (\d+) times", warned.note).group(1))
    assert times >= 1, warned.note
    # Where the CPU has it, nothing is said; fp32 asked for is never questioned.
    assert choose("bf16", "cpu", "train.mixed_precision", WITH) == precision.Choice("bf16")
    assert choose("no", "cpu", "train.mixed_precision", WITHOUT) == precision.Choice("no")
    assert "avx512_fp16 or amx_fp16" in choose("fp16", "cpu", "prepare.mixed_precision", WITHOUT).note


def test_the_probe_sees_what_the_flags_say():
    """The probe's ratio on this machine agrees with its flags: bf16 matmuls many times slower without native
    instructions, not much slower with them."""
    ratio = precision.probe("bf16")
    if cpu_features().native("bf16"):
        assert ratio < 3, ratio
    else:
        assert ratio > 3, ratio


def test_other_devices(monkeypatch):
    assert choose("fp16", "cuda", "train.mixed_precision") == precision.Choice("fp16")
    assert choose("auto", "xla", "train.mixed_precision").precision == "bf16"
    monkeypatch.setenv("PJRT_DEVICE", "CPU")  # XLA's CPU device, the test bed: fp32
    assert choose("auto", "xla", "train.mixed_precision").precision == "no"


def test_bench_leaves_out_a_slow_precision_unless_asked(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: WITHOUT)
    cfg = load(ROOT / "configs/bench.yaml", ["model.architecture.decoder_config.num_hidden_layers=1"])
    results = bench(cfg, steps=1, warmup=0, precisions=["bf16"], skip_slow=True)
    assert results == [{"variant": "", "precision": "bf16", "skipped": results[0]["skipped"]}]
    assert "has no avx512_bf16 or amx_bf16" in results[0]["skipped"]
    assert results[0]["skipped"].endswith("--precision bf16 measures it anyway")
    table = format_table(results)
    assert "not measured: see below" in table and "bf16 not measured: this CPU has no avx512_bf16" in table


def test_the_demo_config_asks_for_auto_and_a_bare_no_means_fp32(tmp_path):
    demo = load(ROOT / "configs/demo.yaml")
    assert demo.train.mixed_precision == "auto"
    # YAML 1.1 reads a bare `no` as false; as a precision it is the word.
    cfg = load(ROOT / "configs/demo.yaml", ["train.mixed_precision=no", "prepare.mixed_precision=no"])
    assert (cfg.train.mixed_precision, cfg.prepare.mixed_precision) == ("no", "no")
    cfg.save(tmp_path / "config.yaml")
    assert load(tmp_path / "config.yaml").train.mixed_precision == "no"
    with pytest.raises(ValueError, match="train.mixed_precision: True is not one of 'auto', 'no', 'bf16', 'fp16'"):
        load(ROOT / "configs/demo.yaml", ["train.mixed_precision=yes"])


@pytest.mark.parametrize(
    ("asked", "features", "ran", "said"),
    [
        ("auto", WITHOUT, "no", "train.mixed_precision=auto: fp32, as this CPU has no avx512_bf16 or amx_bf16"),
        ("auto", WITH, "bf16", "train.mixed_precision=auto: bf16, this CPU has amx_bf16"),
        ("bf16", WITHOUT, "bf16", "warning: train.mixed_precision=bf16, but this CPU has no avx512_bf16 or amx_bf16"),
    ],
)
def test_a_run_says_which_precision_it_took_before_its_first_step(
    codes_dir, tmp_path, monkeypatch, capsys, asked, features, ran, said
):
    from accelerate.state import AcceleratorState
    from conftest import reset_accelerate, tiny

    from dia_tpu.training.recipe import train

    monkeypatch.setattr(precision, "cpu_features", lambda: features)
    reset_accelerate()
    train(tiny(codes_dir, tmp_path / "run", f"train.mixed_precision={asked}", "train.max_steps=1", "data.eval_size=0"))
    assert AcceleratorState().mixed_precision == ran
    out = capsys.readouterr().out
    assert said in out and out.index(said) < out.index("done: 1 steps"), out
    reset_accelerate()


def test_the_device_is_read_from_the_launch_environment(monkeypatch):
    """Before Accelerate sets up (its state fixes the process layout once made): the launcher's CPU flag wins, an
    XLA device needs PJRT_DEVICE and torch_xla not turned off."""
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert precision.device_type() == "cpu"
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert precision.device_type() == "xla"
    monkeypatch.setenv("USE_TORCH_XLA", "0")
    assert precision.device_type() in ("cpu", "cuda")
