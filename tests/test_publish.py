"""`dia-tpu push`: the repository folder `--dry-run` writes loads with transformers and peft, its card is Hub
metadata that says what the run did, and the upload goes through `HfApi` (stubbed here: no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import reset_accelerate, tiny, weights
from huggingface_hub import ModelCard
from transformers import DiaForConditionalGeneration

import dia_tpu.publish as publish
from dia_tpu.artifacts import open_artifact
from dia_tpu.hub import HubError
from dia_tpu.model.adapters import lora_target_modules
from dia_tpu.model.build import build_model
from dia_tpu.training.recipe import train

REPO = "someone/tiny-dia"
SAMPLES = [
    "samples.every=2",
    "samples.max_seconds=0.2",
    'samples.prompts=[{name: plan, text: "[S1] Ready to plan the trip?"}, {name: hi, text: "[S2] Hi!"}]',
]


@pytest.fixture(scope="module")
def runs(codes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    # Attention at Dia's own scale, so the model also has a native form.
    common = ["train.max_steps=2", "eval.eval_every=1", "train.save_every=100", "model.attention_scale=1.0", *SAMPLES]
    train(tiny(codes_dir, root / "full", *common))
    reset_accelerate()
    train(tiny(codes_dir, root / "lora", *common, "model.lora.rank=4", "model.lora.alpha=8"))
    reset_accelerate()
    return root


def test_dry_run_folder_loads_and_its_card_describes_the_run(runs, tmp_path):
    out = publish.upload_folder(runs / "full" / "final", tmp_path / "repo", REPO)
    model = DiaForConditionalGeneration.from_pretrained(out)
    expected = weights(runs / "full")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    assert (out / "generation_config.json").is_file() and (out / "processor_config.json").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["hi.wav", "plan.wav"]

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-to-speech" and card.data.library_name == "transformers"
    assert card.data.license == "other"  # trained from random weights: no base to inherit from
    text = card.text
    assert "0.02 h of audio in 32 clips" in text
    assert "2 optimizer steps" in text and "eval loss" in text and "best" in text
    assert "(samples/plan.wav)" in text and f"from_pretrained({REPO!r})" in text


def test_adapter_alone_loads_onto_its_base_and_says_so(runs, tmp_path):
    from peft import PeftModel

    out = publish.upload_folder(runs / "lora" / "final", tmp_path / "repo", REPO, adapter=True, license="mit")
    assert not list(out.glob("model.safetensors"))  # the adapter only
    model_config = open_artifact(runs / "lora" / "final").config.model
    base = build_model(model_config)  # the run's random base, rebuilt
    before = {key: value.clone() for key, value in base.state_dict().items()}
    targets = lora_target_modules(base, model_config.lora)
    merged = PeftModel.from_pretrained(base, out).merge_and_unload()
    expected = weights(runs / "lora")
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-6, msg=key)
    # The adapter moved every weight it targets, and only those, by far more than the tolerance: an adapter
    # left out of the folder, or loaded at another scale, would fail above.
    moved = {key for key, value in before.items() if (expected[key] - value).abs().max() > 1e-4}
    assert moved == {f"{name}.weight" for name in targets}
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.license == "mit" and "lora" in card.data.tags
    assert "A LoRA adapter" in card.text and "PeftModel.from_pretrained" in card.text


def test_native_checkpoint_for_nari_labs_code(runs, tmp_path):
    from dia_tpu.model.native_files import load_native_model

    out = publish.upload_folder(runs / "full" / "final", tmp_path / "repo", REPO, native="v0.1")
    assert {"dia-v0_1.pth", "config.json", "config.yaml", "README.md"} <= {p.name for p in out.iterdir()}
    model = load_native_model(out)
    expected = weights(runs / "full")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    card = ModelCard.load(out / "README.md")
    assert "native" in card.data.tags and "Dia.from_local" in card.text


def test_push_creates_the_repository_and_uploads_the_folder(runs, tmp_path, monkeypatch):
    calls = []

    class Api:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", sorted(p.name for p in (tmp_path / "repo").iterdir()), kwargs))

    monkeypatch.setattr("huggingface_hub.HfApi", Api)
    folder = publish.upload_folder(runs / "full" / "final", tmp_path / "repo", REPO)
    assert publish.push(folder, REPO, private=True) == f"https://huggingface.co/{REPO}"
    (create, repo, options), (upload, files, kwargs) = calls
    assert (create, repo, options["private"], options["exist_ok"]) == ("create_repo", REPO, True, True)
    assert upload == "upload_folder" and kwargs["folder_path"] == str(folder) and kwargs["repo_id"] == REPO
    assert {"README.md", "model.safetensors", "config.json", "samples"} <= set(files)

    class Offline(Api):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("Cannot connect to huggingface.co")

    monkeypatch.setattr("huggingface_hub.HfApi", Offline)
    with pytest.raises(HubError, match=f"push to {REPO}: Cannot connect.*hf auth login"):
        publish.push(folder, REPO)


def test_push_refuses_what_it_cannot_publish_in_one_line(runs, tmp_path):
    checkpoint = next((runs / "full" / "checkpoints").iterdir())
    for args, message in (
        (["--model", str(checkpoint), "--repo", REPO], "not a dia_tpu export"),
        (["--model", str(runs / "full" / "final"), "--repo", "no-slash"], "looks like org/name"),
        (["--model", str(runs / "full" / "final"), "--repo", REPO, "--adapter"], "holds no adapter/"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "dia_tpu", "push", *args, "--dry-run", str(tmp_path / "x")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_push_with_no_hub_to_reach_is_one_line(runs):
    import os
    import socket

    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_" + "x" * 34}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-m", "dia_tpu", "push", "--model", str(runs / "full" / "final"), "--repo", REPO],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dia-tpu push: error: push to {REPO}: [Errno 111] Connection refused (check the network, log in with "
        "`hf auth login` or set HF_TOKEN; `--dry-run DIR` writes the files without uploading)"
    ]


def test_the_license_is_the_bases(tmp_path):
    assert publish.base_license("nari-labs/Dia-1.6B-0626") == "apache-2.0"  # Dia's, known without the Hub
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# A base\n")
    assert publish.base_license(str(base)) == "cc-by-nc-4.0"
    assert publish.base_license(None) == "other"


def test_training_pushes_its_export_at_the_end(codes_dir, tmp_path, monkeypatch):
    uploads = []

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kwargs):
            uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr("huggingface_hub.HfApi", Api)
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
    push = [
        "train.push_to_hub=true",
        f"train.hub_model_id={REPO}",
        "train.max_steps=1",
        "data.eval_size=0",
        "train.report_to=none",
    ]
    train(tiny(codes_dir, tmp_path / "run", *push))
    ((repo, files),) = uploads
    assert repo == REPO and {"README.md", "model.safetensors", "config.yaml"} <= set(files)


def test_a_push_that_cannot_happen_is_refused_before_training(codes_dir, tmp_path, monkeypatch):
    from dia_tpu.config import ConfigError

    with pytest.raises(ConfigError, match="train.hub_model_id: train.push_to_hub needs a Hub repository id"):
        tiny(codes_dir, tmp_path / "run", "train.push_to_hub=true")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)  # neither HF_TOKEN nor a saved login
    with pytest.raises(HubError, match="no Hugging Face token"):
        train(tiny(codes_dir, tmp_path / "run", "train.push_to_hub=true", f"train.hub_model_id={REPO}"))
    assert not (tmp_path / "run" / "checkpoints").exists()
