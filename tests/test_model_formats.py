"""Model formats and shapes through the real commands: native checkpoints in and out, stereo warm starts,
scratch attention scale, and `dia-tpu plan`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile as sf
import torch
from conftest import RANDOM_CODEC, ROOT, reset_accelerate, tiny, weights

from dia_tpu.config import load
from dia_tpu.data.batching import synthetic_batch
from dia_tpu.data.prepare import prepare
from dia_tpu.model.build import build_model
from dia_tpu.model.load import load_for_inference, load_model
from dia_tpu.model.shapes import set_attention_scale
from dia_tpu.plan import estimate
from dia_tpu.training.recipe import train


def _cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dia_tpu", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _logits(model, cfg) -> torch.Tensor:
    batch = synthetic_batch(cfg, model.config)
    with torch.no_grad():
        return model.eval()(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        ).logits


def _run(codes_dir, run, *extra: str):
    cfg = tiny(codes_dir, run, "train.max_steps=2", "data.eval_size=0", "train.report_to=none", *extra)
    final = train(cfg)
    reset_accelerate()
    return run / "checkpoints" / "step_2", final, cfg


@pytest.fixture(scope="module")
def mono_run(codes_dir, tmp_path_factory):
    """A tiny 9-codebook run with Dia's attention scale (1.0): its checkpoint, export and config."""
    return _run(codes_dir, tmp_path_factory.mktemp("mono"), "model.attention_scale=1.0")


@pytest.mark.parametrize("schema", ["v0.1", "0626"])
def test_native_export_loads_back_and_trains(mono_run, codes_dir, tmp_path, schema):
    checkpoint, final, cfg = mono_run
    out = tmp_path / "native"
    _cli("export", "--checkpoint", str(checkpoint), "--out", str(out), "--native", "--native-schema", schema)
    assert (out / "config.json").is_file() and len(list(out.glob("*.pth"))) == 1

    # Generation loads the native folder with the same weights as the export.
    exported, native = load_model(str(final)), load_model(str(out))
    expected = exported.state_dict()
    for key, value in native.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)

    # Training starts from it (model.pretrained detects the format): step 0 is the exported model exactly.
    again = tiny(codes_dir, tmp_path / "again", f"model.pretrained={out}")
    assert build_model(again.model).state_dict().keys() == expected.keys()
    # `plan` reads the same shape from the native config alone.
    assert estimate(again).params == sum(p.numel() for p in native.parameters())
    for key, value in build_model(again.model).state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_attention_scale_of_a_scratch_run_survives_export(codes_dir, tmp_path):
    checkpoint, final, cfg = _run(codes_dir, tmp_path / "scaled", "model.attention_scale=0.3")
    model, _ = load_for_inference(str(final))
    scales = {m.scaling for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "q_proj")}
    assert scales == {0.3}
    fresh = build_model(cfg.model)
    with torch.no_grad():
        fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(_logits(model, cfg), _logits(fresh, cfg))
    # At Dia's own scale (1.0: what a load that lost 0.3 would run) the logits move by far more than the tolerance.
    set_attention_scale(fresh, 1.0)
    assert (_logits(fresh, cfg) - _logits(model, cfg)).abs().max() > 1e-3
    # Native Dia has no attention scale: exporting this model natively would change it, so it is refused.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "export",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "native"),
            "--native",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "attention_scale=0.3" in done.stderr
    assert not (tmp_path / "native").exists()


def test_stereo_warm_start_trains_and_generates_stereo(mono_run, tmp_path):
    _, final, cfg = mono_run
    stereo_codes = tmp_path / "stereo_codes"
    stereo = load(ROOT / "configs/demo.yaml", [*RANDOM_CODEC, "prepare.stereo=true"])
    prepare(stereo, ROOT / "data/sample", stereo_codes)
    reset_accelerate()
    run = tmp_path / "stereo"
    stereo = tiny(
        stereo_codes,
        run,
        f"model.pretrained={final}",
        "model.stereo=true",
        "train.max_steps=3",
        "data.eval_size=0",
        "train.report_to=none",
    )
    out = train(stereo)
    trained = weights(run)
    assert trained["model.decoder.embeddings.embed.weight"].shape[0] == 18 * 1028
    assert trained["logits_dense.weight"].shape[0] == 18 * 1028
    model, _ = load_for_inference(str(out))
    assert model.config.delay_pattern == cfg.model.architecture["delay_pattern"] * 2
    assert estimate(stereo).params == sum(p.numel() for p in model.parameters())

    wav = tmp_path / "stereo.wav"
    _cli(
        "generate",
        "--model",
        str(out),
        "--text",
        "[S1] Hello.",
        "--out",
        str(wav),
        "--max-seconds",
        "0.3",
        "--audio-prompt",
        str(ROOT / "data/sample/audio/utt_000.flac"),
        "--prompt-transcript",
        "[S1] Hello there.",
    )
    wave, rate = sf.read(wav)
    assert rate == 44100 and wave.ndim == 2 and wave.shape[1] == 2


def test_plan_command_reports_the_demo(tmp_path):
    done = _cli("plan", "--config", str(ROOT / "configs/demo.yaml"), "model.lora.rank=4")
    for word in ("trainable", "weights", "gradients", "optimizer", "activations", "24 GB", "v5e"):
        assert word in done.stdout, word
