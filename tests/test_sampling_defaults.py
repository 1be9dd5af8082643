"""Sampling defaults travel with a model: an export holds its run's sampling in generation_config.json, and
generation without flags uses it (a flag still wins; a folder without it falls back to the published settings)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from conftest import tiny
from transformers import DacConfig, DacModel

from dia_tpu.cli import main
from dia_tpu.config import published, run_sampling, unguided_warning
from dia_tpu.errors import UserError
from dia_tpu.export import export
from dia_tpu.generation.defaults import dia2_sampling, model_defaults, own_sampling
from dia_tpu.generation.synthesize import GenerationSettings, synthesize_codes, with_model_sampling
from dia_tpu.model.load import load_for_inference

RATE = 44100 / 512
TEXTS = ["[S1] Hello there.", "[S2] Are you ready?"]
RUNS = {"guidance_scale": 1.0, "temperature": 0.6, "top_p": 0.9, "top_k": 12}


@pytest.fixture(scope="module")
def exported(tiny_dia, codes_dir, tmp_path_factory):
    """The tiny model exported by a run that set samples.temperature and top_k and trained no unconditional
    branch (so its guidance defaults to off)."""
    root = tmp_path_factory.mktemp("sampling")
    cfg = tiny(codes_dir, root / "run", "samples.temperature=0.6", "samples.top_k=12", "train.unconditional_frac=0")
    torch.manual_seed(0)
    codec = DacModel(DacConfig(encoder_hidden_size=8, decoder_hidden_size=32, sampling_rate=44100)).eval()
    export(copy.deepcopy(tiny_dia), codec, cfg, root / "export")
    return root / "export"


def test_a_runs_sampling_is_its_samples_then_guidance_off_without_text_dropout(codes_dir, tmp_path):
    def sampling(*overrides: str) -> dict:
        return run_sampling(tiny(codes_dir, tmp_path, *overrides), "dia")

    assert sampling("train.unconditional_frac=0.15", "samples.guidance_scale=null", "samples.temperature=null") == (
        published("dia")
    )
    off = sampling("train.unconditional_frac=0", "samples.guidance_scale=null")
    assert off["guidance_scale"] == 1.0 and off["temperature"] == 0.7  # the demo config's samples.temperature
    assert sampling("train.unconditional_frac=0", "samples.guidance_scale=2.5")["guidance_scale"] == 2.5
    assert run_sampling(tiny(codes_dir, tmp_path, "train.unconditional_frac=0.2"), "dia2") == {
        "guidance_scale": 1.0,  # the demo config's samples.*
        "temperature": 0.7,
        "top_k": 50,  # upstream Dia2's; Dia2 has no top_p
    }
    # A training checkpoint (no generation_config.json of its own) samples as its run's config says.
    checkpoint = tmp_path / "checkpoints" / "step_2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.bin").write_bytes(b"")
    tiny(codes_dir, tmp_path, "train.unconditional_frac=0", "samples.top_k=9").save(checkpoint / "config.yaml")
    assert own_sampling(checkpoint, "dia") == {
        **published("dia"),
        "guidance_scale": 1.0,
        "temperature": 0.7,
        "top_k": 9,
    }
    assert own_sampling(tmp_path, "dia") == {}
    assert "unconditional_frac 0" in unguided_warning("m", 3.0, 0.0)
    assert unguided_warning("m", 1.0, 0.0) is None and unguided_warning("m", 3.0, 0.15) is None


def test_an_export_samples_as_its_run_did_unless_a_flag_says_otherwise(exported, tmp_path):
    written = json.loads((exported / "generation_config.json").read_text())
    assert {key: written[key] for key in RUNS} == RUNS
    assert model_defaults(str(exported)) == ("dia", RUNS)
    model, _ = load_for_inference(exported)
    own = with_model_sampling(GenerationSettings(), model)
    assert {key: getattr(own, key) for key in RUNS} == RUNS
    assert with_model_sampling(GenerationSettings(temperature=1.3), model).temperature == 1.3  # a flag wins
    # No flags: the same tokens as the run's settings given as flags; Dia's published settings give others.
    plain = synthesize_codes(model, TEXTS, GenerationSettings(seed=5, max_seconds=0.3), RATE)
    flagged = synthesize_codes(model, TEXTS, GenerationSettings(seed=5, max_seconds=0.3, **RUNS), RATE)
    other = synthesize_codes(model, TEXTS, GenerationSettings(seed=5, max_seconds=0.3, **published("dia")), RATE)
    assert all(torch.equal(a, b) for a, b in zip(plain, flagged, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(plain, other, strict=True))

    # A folder without generation_config.json falls back to Dia's published settings.
    bare = tmp_path / "bare"
    shutil.copytree(exported, bare)
    (bare / "generation_config.json").unlink()
    model, _ = load_for_inference(bare)
    fallback = with_model_sampling(GenerationSettings(), model)
    assert {key: getattr(fallback, key) for key in RUNS} == published("dia") == model_defaults(str(bare))[1]
    # A file that asks for what sampling cannot do is refused as the flag would be, naming the file.
    model.generation_config.temperature = -1.0
    with pytest.raises(UserError, match=r"generation_config\.json temperature must be a number > 0, got -1\.0"):
        with_model_sampling(GenerationSettings(), model)
    assert with_model_sampling(GenerationSettings(temperature=0.5), model).temperature == 0.5  # a flag over it


def test_generate_says_which_sampling_it_uses_and_warns_of_guidance_the_model_never_learnt(exported, tmp_path, capsys):
    out = tmp_path / "x.wav"
    main(["generate", "--model", str(exported), "--text", TEXTS[0], "--out", str(out), "--max-seconds", "0.3"])
    said = capsys.readouterr().out
    assert "sampling: guidance_scale 1.0, temperature 0.6, top_p 0.9, top_k 12" in said and "note:" not in said
    main(["generate", "--model", str(exported), "--text", TEXTS[0], "--out", str(out), "--guidance-scale", "3"])
    said = capsys.readouterr().out
    assert "sampling: guidance_scale 3.0," in said and "train.unconditional_frac 0" in said
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--model", str(exported), "--help"])
    assert stop.value.code == 0
    assert "samples by default with guidance_scale 1.0, temperature 0.6, top_p 0.9, top_k 12" in " ".join(
        capsys.readouterr().out.split()
    )


def test_a_dia2_folder_samples_by_its_file_then_upstreams(dia2_model, tmp_path):
    folder = tmp_path / "dia2"
    shutil.copytree(dia2_model, folder)
    assert dia2_sampling(folder, {}).temperature == published("dia2")["temperature"]
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.5, "top_k": 7, "unknown": "x"}))
    own = dia2_sampling(folder, {})
    assert (own.temperature, own.top_k, own.guidance_scale) == (0.5, 7, published("dia2")["guidance_scale"])
    flagged = dia2_sampling(folder, {"temperature": 0.9, "top_k": None})
    assert (flagged.temperature, flagged.top_k) == (0.9, 7)
    assert model_defaults(str(folder)) == ("dia2", {"guidance_scale": 2.0, "temperature": 0.5, "top_k": 7})
    (folder / "generation_config.json").write_text(json.dumps({"temperature": "hot"}))
    with pytest.raises(UserError, match=r"generation_config\.json: temperature must be a number, got 'hot'"):
        dia2_sampling(folder, {})
