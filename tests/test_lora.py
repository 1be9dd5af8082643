"""LoRA, freezing and the optimizer options, through real training runs on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import reset_accelerate, scalars, tiny, weights
from safetensors.torch import load_file

from dia_tpu.artifacts.weights import weight_names, weights_file
from dia_tpu.config import ConfigError, LoraSettings, ModelConfig
from dia_tpu.data.batching import synthetic_batch
from dia_tpu.export import export_checkpoint
from dia_tpu.model.adapters import lora_target_modules, merged_state_dict, setup_training
from dia_tpu.model.build import build_model
from dia_tpu.model.load import load_for_inference, load_trained
from dia_tpu.training.recipe import train

LORA = ["model.lora.rank=4", "model.lora.alpha=8", "model.lora.targets=[attention, mlp]", "train.learning_rate=5e-3"]


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        ).logits


def _saved_names(folder) -> set[str]:
    names = weight_names(weights_file(folder))  # safetensors, or torch's .bin on XLA
    assert names, f"{folder} holds no weights"
    return names


def test_lora_trains_only_adapters_and_merges_exactly(codes_dir, tmp_path):
    run = tmp_path / "lora"
    cfg = tiny(
        codes_dir,
        run,
        *LORA,
        "train.max_steps=20",
        "train.save_every=10",
        "eval.eval_every=10",
        "samples.every=20",
        "samples.max_seconds=0.3",
    )
    final = train(cfg)
    assert sorted(p.name for p in (run / "samples" / "step_000020").glob("*.wav")) == ["clone.wav", "plan.wav"]

    losses = [v for _, v in scalars(run)["train/loss"]]
    assert losses[-1] < losses[0]
    # Checkpoints hold the adapters only: every LoRA matrix, nothing of the base.
    ckpt = run / "checkpoints" / "step_20"
    names = _saved_names(ckpt)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * (6 + 10) * 2  # 2 layers x (encoder 4 + 2 mlp, decoder 8 + 2 mlp) x (A, B)

    # The base weights are untouched, the adapters moved.
    trained = load_trained(ckpt)
    base = build_model(cfg.model).state_dict()
    plain = trained.get_base_model().state_dict()
    for key, value in base.items():
        lora_key = key.replace(".weight", ".base_layer.weight")
        torch.testing.assert_close(plain.get(lora_key, plain.get(key)), value, rtol=0, atol=0, msg=key)
    assert all(p.abs().sum() > 0 for n, p in trained.named_parameters() if ".lora_B." in n)

    # Merged (the final export) = base + adapter, and so is base + the exported adapter folder.
    batch = synthetic_batch(cfg, trained.config)
    expected = _logits(trained, batch)
    # The base alone is far from these logits (measured: by up to 1.0, where the loosest tolerance below is
    # 1e-4 + 1e-4 x |logit|): a merge or a load that dropped the adapter, or its scaling, would fail.
    assert (_logits(build_model(cfg.model), batch) - expected).abs().max() > 0.01
    merged_model, _ = load_for_inference(str(final))
    torch.testing.assert_close(_logits(merged_model, batch), expected, rtol=1e-5, atol=1e-5)
    assert (final / "adapter" / "adapter_config.json").is_file()

    adapter = export_checkpoint(ckpt, tmp_path / "adapter", form="adapter")
    base_export = export_checkpoint(ckpt, tmp_path / "merged", form="merge")
    again, _ = load_for_inference(str(base_export))
    torch.testing.assert_close(_logits(again, batch), expected, rtol=1e-5, atol=1e-5)
    # The adapter applied to a plain export of the base gives the same model again.
    reset_accelerate()
    base_run = train(
        tiny(
            codes_dir,
            tmp_path / "base",
            "train.max_steps=1",
            "train.learning_rate=1e-12",
            "eval.eval_every=0",
            "data.eval_size=0",
        )
    )
    with_adapter, _ = load_for_inference(str(base_run), adapter=str(adapter))
    torch.testing.assert_close(_logits(with_adapter, batch), expected, rtol=1e-4, atol=1e-4)

    # A checkpoint loaded without adapters is a clear error, not a silent base model.
    with pytest.raises(ValueError, match="not a LoRA run|no adapter"):
        export_checkpoint(base_run.parent / "checkpoints" / "step_1", tmp_path / "x", form="adapter")


def test_lora_resume_continues_exactly(codes_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [
        *LORA,
        "train.max_steps=12",
        "train.save_every=6",
        "eval.eval_every=6",
        "model.lora.modules_to_save=[logits_dense]",
    ]
    train(tiny(codes_dir, straight, *common))
    ckpt = straight / "checkpoints" / "step_6"
    assert any(".modules_to_save." in n for n in _saved_names(ckpt))
    reset_accelerate()
    train(tiny(codes_dir, resumed, *common, f"train.resume={ckpt}"))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    # Resuming a LoRA checkpoint with another LoRA shape names the mismatch, before anything is built...
    reset_accelerate()
    with pytest.raises(ValueError, match=r"other model settings.*\n  - model.lora.targets: \['attention', 'mlp'\]"):
        train(tiny(codes_dir, tmp_path / "other", *common, "model.lora.targets=[attention]", f"train.resume={ckpt}"))
    # ... and a checkpoint whose saved config does not say so (edited, or from elsewhere) by its weights.
    saved, mark = ckpt / "config.yaml", json.loads((ckpt / "checkpoint.json").read_text())
    saved.write_text(saved.read_text().replace("    - mlp\n", ""))
    mark["files"]["config.yaml"] = saved.stat().st_size  # the mark edited to match
    (ckpt / "checkpoint.json").write_text(json.dumps(mark))
    reset_accelerate()
    with pytest.raises(ValueError, match="trainable parameters"):
        train(tiny(codes_dir, tmp_path / "other", *common, "model.lora.targets=[attention]", f"train.resume={ckpt}"))


def test_merged_state_dict_matches_merge_and_unload(codes_dir, tmp_path):
    cfg = tiny(codes_dir, tmp_path, *LORA, "model.lora.modules_to_save=[logits_dense]")
    model = setup_training(build_model(cfg.model), cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = merged_state_dict(model)
    folded = model.merge_and_unload().state_dict()
    assert state.keys() == folded.keys()
    for key in folded:
        torch.testing.assert_close(state[key], folded[key], msg=key)
    # Every LoRA target and the saved head moved by far more than the tolerance (1e-5): a merge that left out an
    # adapter, or its alpha / rank scaling, would fail above.
    base = build_model(cfg.model).state_dict()
    moved = [key for key in folded if (state[key] - base[key]).abs().max() > 1e-3]
    assert len(moved) == 2 * (6 + 10) + 1


def test_lora_targets(tiny_dia):
    def targets(**kw) -> list[str]:
        return lora_target_modules(tiny_dia, LoraSettings(rank=4, **kw))

    attention = targets()
    assert len(attention) == 4 + 8 and all("_attention." in n for n in attention)
    assert all(".decoder." in n for n in targets(parts=["decoder"]))
    assert targets(targets=["head"]) == ["logits_dense"]
    assert {n.rsplit(".", 1)[1] for n in targets(targets=["mlp"])} == {"gate_up_proj", "down_proj"}
    assert targets(targets=["cross_attention.q_proj"]) == ["model.decoder.layers.0.cross_attention.q_proj"]
    with pytest.raises(ConfigError, match="no module is named.*nope"):
        targets(targets=["nope"])


def test_freezing(codes_dir, tmp_path):
    run = tmp_path / "frozen"
    cfg = tiny(
        codes_dir,
        run,
        "model.freeze.text_encoder=true",
        "model.freeze.audio_embeddings=true",
        "model.freeze.decoder_layers=1",
        "train.max_steps=5",
        "eval.eval_every=0",
    )
    train(cfg)
    before, after = build_model(cfg.model).state_dict(), weights(run)
    frozen = ("model.encoder.", "model.decoder.embeddings.", "model.decoder.layers.0.")
    for key, value in before.items():
        same = torch.equal(after[key], value)
        assert same == key.startswith(frozen), key

    bad = ModelConfig(**{**vars(cfg.model), "freeze": type(cfg.model.freeze)(decoder_layers=9)})
    with pytest.raises(ConfigError, match="decoder_layers=9.*2 layers"):
        setup_training(build_model(bad), bad)


def test_8bit_adamw_trains_on_cpu(codes_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    run = tmp_path / "bnb"
    train(
        tiny(
            codes_dir,
            run,
            "train.optimizer=adamw_8bit",
            "train.max_steps=20",
            "train.learning_rate=3e-3",
            "eval.eval_every=0",
            "train.save_every=20",
        )
    )
    losses = [v for _, v in scalars(run)["train/loss"]]
    assert losses[-1] < losses[0]
    # The logged losses of a run that learns nothing (learning rate 1e-12) wander by 0.01 from batch to batch;
    # this one falls by 0.6 (measured), so the drop is the optimizer's doing.
    assert losses[0] - losses[-1] > 0.1, losses
    state = torch.load(run / "checkpoints" / "step_20" / "optimizer.bin", weights_only=False)["state"]
    # bitsandbytes keeps the two moments of large tensors as uint8 with per-block scales.
    moments = [s.get("__bnb_optimizer_quant_state__", s) for s in state.values()]
    assert any(m.get("state1") is not None and m["state1"].dtype == torch.uint8 for m in moments)


def test_compiled_training_saves_plain_names(codes_dir, tmp_path):
    run = tmp_path / "compiled"
    train(tiny(codes_dir, run, "model.compile=true", "train.max_steps=2", "eval.eval_every=0"))
    names = _saved_names(run / "checkpoints" / "step_2")
    assert names == set(load_file(run / "final" / "model.safetensors"))
    assert not any("_orig_mod" in n for n in names)
