"""Dia2 through dia_tpu's one training entry point: `configs/dia2-1b.yaml` with the tiny fixture model and a
prepared dataset of codes and timed words (tests/helpers/dia2_data.py), trained, evaluated, checkpointed,
resumed, run on two gloo processes and exported in upstream's format."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, reset_accelerate, scalars, two_process_launch
from peft import PeftModel
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dia_tpu.cli import main
from dia_tpu.config import load, run_sampling
from dia_tpu.errors import UserError
from dia_tpu.families.dia2.files import read_model
from dia_tpu.training.recipe import train

CONFIG = ROOT / "configs/dia2-1b.yaml"
HEADS = ["action", "cb0", "cb1", "cb2", "cb3"]
TALK = "[S1] hello there [S2] hi again friend"


def dia2_config(model, codes, out, *extra: str):
    """The shipped Dia2-1B config, pointed at the tiny model and data, sized for a CPU test."""
    tiny = [
        f"model.pretrained={model}",
        "model.gradient_checkpointing=false",
        f"data.dataset={codes}",
        "data.max_audio_frames=40",
        "data.buckets=[]",
        "data.eval_size=4",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=3e-3",
        "train.warmup_steps=2",
        "train.lr_scheduler=constant",
        "train.mixed_precision=no",
        "train.unconditional_frac=0.2",
        "train.log_every=5",
        "train.report_to=tensorboard",
        "eval.batch_size=4",
        "samples.every=0",
        "samples.max_seconds=2",
        f"samples.prompts=[{{name: talk, text: '{TALK}'}}]",
        f"output.dir={out}",
    ]
    return load(CONFIG, [*tiny, *extra])


def test_dia2_fine_tunes_evaluates_and_exports_in_upstreams_format(dia2_model, dia2_codes, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = dia2_config(
        dia2_model,
        dia2_codes,
        run,
        "train.max_steps=40",
        "train.save_every=20",
        "eval.eval_every=20",
        "eval.eval_on_start=true",
        "eval.audio.every=20",
        "eval.select_by=wer",
        "samples.every=20",
    )
    final = train(cfg)
    said = capsys.readouterr().out
    assert "loss per head (action cb0 cb1 cb2 cb3)" in said
    logged = scalars(run)
    before = {head: dict(logged[f"eval/acc_{head}"])[0] for head in HEADS}
    after = {head: dict(logged[f"eval/acc_{head}"])[40] for head in HEADS}
    losses = dict(logged["eval/loss"])
    assert losses[40] < 0.5 * losses[0], losses
    # Every head's held-out accuracy rises (the recordings follow a rule the model can learn).
    assert all(after[h] > before[h] + 0.1 for h in HEADS), (before, after)
    # The checkpoint keeps the upstream config beside the weights.
    assert json.loads((run / "checkpoints/step_40/config.json").read_text())["runtime"]["weights_schedule"]
    # The export: upstream's files, the tokenizer at its root, the codec inside, the asset manifest, and the
    # trained weights under upstream's names (unchanged keys, changed values).
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "model.safetensors", "dia2_assets.json", "tokenizer.json", "mimi", "config.yaml"} <= names
    config = json.loads((final / "config.json").read_text())
    assert config["assets"] == {"tokenizer": None, "mimi": "mimi"}
    assert json.loads((final / "dia2_assets.json").read_text()) == {
        "config": "config.json",
        "weights": "model.safetensors",
        "tokenizer": None,
    }
    trained, base = load_file(final / "model.safetensors"), load_file(dia2_model / "model.safetensors")
    assert trained.keys() == base.keys()
    assert not torch.equal(trained["transformer.cb0_head.weight"], base["transformer.cb0_head.weight"])
    read_model(final)  # loads as is
    # The run's sampling beside upstream's files, which generate below defaults to.
    assert json.loads((final / "generation_config.json").read_text()) == run_sampling(cfg, "dia2")
    # It spoke while training: samples written and logged, the held-out items generated, judged and logged, and
    # best/ chosen by their word error rate.
    assert [e.step for e in samples_logged(run, "samples/talk")] == [20, 40]
    rows = [json.loads(line) for line in (run / "evaluations/step_000040/rows.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["seconds"] > 0 and "wer" in row and "similarity_prompt" in row for row in rows)
    assert [step for step, _ in logged["audio/wer"]] == [20, 40]
    assert (run / "best").is_dir()
    # ... and a sample is a function of the weights, the prompt and its seed: `dia-tpu generate` on the export
    # (its tokenizer and codec inside it) at the same settings writes step 40's sample again.
    again = tmp_path / "again.wav"
    main(["generate", "--model", str(final), "--text", TALK, "--out", str(again), "--max-seconds", "2"])
    assert "wrote" in capsys.readouterr().out
    written, rate = sf.read(run / "samples/step_000040/talk.wav")
    assert rate == 24000 and len(written) > 0 and np.array_equal(sf.read(again)[0], written)
    # The weights decide it: step 20's sample, from other weights, differs.
    assert not np.array_equal(sf.read(run / "samples/step_000020/talk.wav")[0][: len(written)], written)


def samples_logged(run, tag: str):
    acc = EventAccumulator(str(next((run / "logs").iterdir())), size_guidance={"audio": 0})
    acc.Reload()
    return acc.Audio(tag)


def test_dia2_lora_resumes_exactly_and_exports_the_adapter_beside_the_merged_model(dia2_model, dia2_codes, tmp_path):
    lora = ["model.lora.rank=4", "model.lora.alpha=8", "train.save_every=6", "eval.eval_every=6", "samples.every=12"]
    straight = train(dia2_config(dia2_model, dia2_codes, tmp_path / "straight", "train.max_steps=12", *lora))
    reset_accelerate()
    # From the straight run's step 6 (mid-epoch: 5 batches an epoch), into a run folder of its own.
    middle = f"train.resume={tmp_path / 'straight/checkpoints/step_6'}"
    resumed = train(dia2_config(dia2_model, dia2_codes, tmp_path / "resumed", "train.max_steps=12", middle, *lora))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The last sample, spoken with the adapters on: the same from both runs.
    said = [sf.read(run / "samples/step_000012/talk.wav")[0] for run in (straight.parent, resumed.parent)]
    assert len(said[0]) > 0 and np.array_equal(*said)
    adapter = load_file(straight / "adapter/adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    base = load_file(dia2_model / "model.safetensors")
    assert not torch.equal(
        a["transformer.layers.0.attn.q_proj.weight"], base["transformer.layers.0.attn.q_proj.weight"]
    )
    # Only the adapted layers moved (model.lora.targets: attention, the default): the MLPs and heads are the base's.
    assert torch.equal(a["transformer.cb0_head.weight"], base["transformer.cb0_head.weight"])
    assert torch.equal(a["transformer.layers.0.mlp.wi.weight"], base["transformer.layers.0.mlp.wi.weight"])
    assert not torch.equal(
        a["depformer.layers.0.self_attention.in_proj.0.weight"],
        base["depformer.layers.0.self_attention.in_proj.0.weight"],
    )
    # `dia-tpu export` of the LoRA checkpoint: the merged model equals the run's own export; the adapter alone
    # loads onto the base with peft and gives the same model.
    step = str(tmp_path / "straight/checkpoints/step_12")
    main(["export", "--checkpoint", step, "--out", str(tmp_path / "merged")])
    main(["export", "--checkpoint", step, "--out", str(tmp_path / "adapter"), "--adapter"])
    merged = load_file(tmp_path / "merged/model.safetensors")
    assert all(torch.equal(merged[key], a[key]) for key in a)
    with_adapter = PeftModel.from_pretrained(read_model(dia2_model), str(tmp_path / "adapter")).merge_and_unload()
    assert all(torch.allclose(with_adapter.state_dict()[key], a[key], atol=1e-6) for key in a)
    with pytest.raises(SystemExit, match="its export is upstream's format already"):
        main(["export", "--checkpoint", step, "--out", str(tmp_path / "n"), "--native"])


def test_two_gloo_processes_equal_one_with_accumulation_on_dia2(dia2_model, dia2_codes, tmp_path):
    common = ["train.max_steps=3", "data.eval_size=0", "train.report_to=none", "train.unconditional_frac=0.3"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    cfg = dia2_config(dia2_model, dia2_codes, tmp_path / "ddp", *common)
    cfg.save(tmp_path / "ddp.yaml")
    cmd = [
        *two_process_launch(29547),
        str(ROOT / "dia_tpu/finetune_acc_tpu.py"),
        "--config",
        str(tmp_path / "ddp.yaml"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(dia2_config(dia2_model, dia2_codes, tmp_path / "one", *common, "train.gradient_accumulation_steps=2"))
    two, one = load_file(tmp_path / "ddp/final/model.safetensors"), load_file(one / "model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fsdp2_shards_dia2_over_two_gloo_processes_as_one_process_trains(dia2_model, dia2_codes, tmp_path):
    """FSDP2 on Dia2: each process holds about half, checkpoints are sharded, and the run takes the steps one
    process takes with the same global batch; the export and `dia-tpu export` put the shards together."""
    # 16 training items: 4 batches an epoch, which two processes split evenly (an odd count would have Accelerate
    # repeat a batch on one of them, which one process does not see).
    steps = ["train.max_steps=4", "train.save_every=2", "eval.eval_every=2", "data.eval_size=8", "train.report_to=none"]
    steps.append("samples.every=4")  # generated on the main process from the gathered weights
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    dia2_config(dia2_model, dia2_codes, tmp_path / "fsdp", *steps, "train.sharding=fsdp").save(tmp_path / "f.yaml")
    cmd = [*two_process_launch(29548), str(ROOT / "dia_tpu/finetune_acc_tpu.py"), "--config", str(tmp_path / "f.yaml")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = re.search(r"sharding: FSDP2, this process holding ([\d.]+) M of the ([\d.]+) M", done.stdout)
    assert 0.4 < float(line[1]) / float(line[2]) < 0.6, line[0]
    assert (tmp_path / "fsdp/checkpoints/step_4/pytorch_model_fsdp_0").is_dir()
    assert sf.info(tmp_path / "fsdp/samples/step_000004/talk.wav").frames > 0
    assert not (tmp_path / "fsdp/checkpoints/step_4/model.safetensors").exists()
    one = train(dia2_config(dia2_model, dia2_codes, tmp_path / "one", *steps, "train.gradient_accumulation_steps=2"))
    sharded, whole = load_file(tmp_path / "fsdp/final/model.safetensors"), load_file(one / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(sharded[key], whole[key], rtol=1e-4, atol=1e-5, msg=key)
    main(["export", "--checkpoint", str(tmp_path / "fsdp/checkpoints/step_4"), "--out", str(tmp_path / "x")])
    exported = load_file(tmp_path / "x/model.safetensors")
    assert all(torch.equal(exported[key], sharded[key]) for key in sharded)


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["train.sharding=fsdp", "model.lora.rank=4"], "train.sharding=fsdp with model.lora: not supported"),
        (["samples.every=1", "samples.top_p=0.9"], "samples.top_p=0.9: Dia2 samples by top-k alone"),
        (
            ["samples.every=1", "samples.max_seconds=60"],
            "samples.prompts 'talk': max_seconds=60.0 needs 750 frames but the model's context holds 92",
        ),
        (
            ["model.codec=kyutai/mimi"],
            "model.codec=kyutai/mimi (Dia2 speaks with its own Mimi, config.json's assets.mimi)",
        ),
        (["data.max_audio_frames=200"], "makes 203 frames with the delays; the model's context is 96"),
        (
            ["model.lora.rank=4", "model.lora.modules_to_save=[logits]", "model.lora.targets=[attention, head]"],
            "model.lora.modules_to_save, model.lora.targets=head (Dia2 takes attention and mlp): Dia's settings",
        ),
        (["train.codebook_weights=[1, 1]"], "train.codebook_weights has 2 entries but the model has 4"),
    ],
)
def test_what_dia2_training_cannot_do_yet_is_one_line_before_any_step(
    dia2_model, dia2_codes, tmp_path, overrides, said
):
    cfg = dia2_config(dia2_model, dia2_codes, tmp_path / "run", "train.max_steps=2", *overrides)
    cfg.save(tmp_path / "c.yaml")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(tmp_path / "c.yaml")])
    assert said in str(stop.value) and len(str(stop.value).splitlines()) <= 2, str(stop.value)
    assert not (tmp_path / "run/checkpoints").exists()


def test_a_folder_may_name_its_tokenizer_and_codec_in_upstreams_asset_manifest(dia2_model, tmp_path):
    """Released repositories name their assets in dia2_assets.json; the config's `assets` come first."""
    import shutil

    from dia_tpu.families.dia2.assets import load_mimi, load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(dia2_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["assets"] = {"tokenizer": None, "mimi": None}
    (folder / "config.json").write_text(json.dumps(config))
    cfg = read_model(folder).config
    with pytest.raises(UserError, match="names no tokenizer"):
        load_tokenizer(folder, cfg)
    (folder / "dia2_assets.json").write_text(json.dumps({"tokenizer": "tokenizer", "mimi": "mimi"}))
    assert load_tokenizer(folder, cfg).get_vocab()["hello"] == 10
    assert load_mimi(folder, cfg).config.num_quantizers == 4


def test_dia2_trains_in_bf16_with_fp32_master_weights(dia2_model, dia2_codes, tmp_path):
    steps = ["train.max_steps=6", "train.save_every=100", "eval.eval_every=6", "eval.eval_on_start=true"]
    final = train(dia2_config(dia2_model, dia2_codes, tmp_path / "bf16", *steps, "train.mixed_precision=bf16"))
    losses = dict(scalars(tmp_path / "bf16")["eval/loss"])
    assert losses[6] < losses[0], losses
    exported = load_file(final / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in exported.values())


def test_a_hub_repositorys_family_is_read_from_its_config_json(tmp_path, monkeypatch):
    """`model.family: auto` with a hub id reads the repository's config.json (the cached copy without a request);
    a repository that cannot be read is left to Dia's loader, which says why in one line."""
    import huggingface_hub

    from dia_tpu.config import ModelConfig
    from dia_tpu.families import family_of

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for repo, config in (("someone/dia2-tuned", ROOT / "tests/fixtures/dia2/tiny/config.json"), ("someone/dia", None)):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs/main").write_text("0" * 40)
        (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
        text = config.read_text() if config else json.dumps({"model_type": "dia"})
        (folder / "snapshots" / ("0" * 40) / "config.json").write_text(text)
    assert family_of(ModelConfig(pretrained="someone/dia2-tuned")).name == "dia2"
    assert family_of(ModelConfig(pretrained="someone/dia")).name == "dia"
    assert family_of(ModelConfig(pretrained="someone/not-cached")).name == "dia"
    assert family_of(ModelConfig(pretrained="someone/dia", family="dia2")).name == "dia2"


def test_bench_times_a_dia2_training_step_on_its_synthetic_batch(dia2_model):
    from dia_tpu.bench.train import bench
    from dia_tpu.families.dia2.data import synthetic_batch

    cfg = dia2_config(dia2_model, "unused", "unused", "train.batch_size=2", "data.max_audio_frames=24")
    model = read_model(dia2_model)
    batch = synthetic_batch(cfg, model.config)
    # Every codebook of every frame is a target: 2 items x 4 codebooks x 24 frames.
    assert batch["tokens"].shape == (2, 6, 24 + 3) and batch["audio_mask"].sum() == 2 * 4 * 24
    assert batch["actions"].sum() > 2 * 2 and batch["action_mask"].any()  # words start, some actions are free
    (result,) = bench(cfg, steps=2, warmup=1, precisions=["no"])
    assert result["frames"] == 2 * 24 * 2 and result["max_text_tokens"] is None
    assert result["params"] == sum(p.numel() for p in model.parameters()) and math.isfinite(result["final_loss"])
    assert 0 < result["share_of_matmul"] < 1


@pytest.mark.parametrize(
    "extra",
    [[], ["model.freeze.text_encoder=true", "model.freeze.decoder_layers=1"], ["model.lora.rank=4"]],
    ids=["full", "frozen", "lora"],
)
def test_plan_counts_the_dia2_model_training_builds_from_its_config_alone(dia2_model, tmp_path, extra):
    """`dia-tpu plan` on Dia2 reads config.json only (a folder without weights plans), and counts what training
    builds; the positions are the collator's; checkpointing keeps fewer activations."""
    import shutil

    from dia_tpu.plan import estimate
    from dia_tpu.training.runtime import Runtime
    from dia_tpu.training.step import build_trainable

    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(dia2_model / "config.json", config_only)
    shape = ["data.max_audio_frames=40", "train.batch_size=2", "model.gradient_checkpointing=false", *extra]
    plan = estimate(dia2_config(config_only, "unused", tmp_path, *shape))
    cfg = dia2_config(dia2_model, "unused", tmp_path, *shape)
    built = build_trainable(cfg, Runtime.assumed(cfg, "cpu"))
    params = sum(p.numel() for p in built.parameters())
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert (plan.params, plan.trainable) == (params, trainable) and (trainable < params) == bool(extra)
    assert plan.weights == 4 * params and plan.gradients == 4 * trainable
    assert plan.decoder_steps == 40 + 3 - 1 and plan.text_tokens is None and plan.family == "dia2"
    recomputed = estimate(dia2_config(config_only, "unused", tmp_path, *shape, "model.gradient_checkpointing=true"))
    assert 0 < recomputed.activations < plan.activations


def test_word_timings_that_do_not_fit_their_recordings_are_one_line_naming_them(dia2_model, tmp_path):
    import random

    from helpers.dia2_data import recording, write_rows

    rng = random.Random(5)
    rows = [recording(rng) for _ in range(6)]
    rows[1]["words"][0]["speaker"] = 3
    rows[4]["words"][-1]["end"] = rows[4]["frames"] + 7
    codes = write_rows(tmp_path / "codes", rows, "bad")
    dia2_config(dia2_model, codes, tmp_path / "run", "train.max_steps=2", "data.eval_size=0").save(tmp_path / "c.yaml")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(tmp_path / "c.yaml")])
    said = str(stop.value)
    assert len(said.splitlines()) == 1 and "word timings that do not fit their recordings" in said, said
    assert "dialogue_001: word" in said and "speaker 3 (1 or 2)" in said
    assert f"dialogue_004: word {rows[4]['words'][-1]['word']!r} ends at frame {rows[4]['frames'] + 7}" in said


def test_a_voice_prefix_before_an_item_is_laid_out_as_generation_after_it_and_only_the_item_is_taught(
    dia2_model, tmp_path
):
    import dataclasses
    import random

    from datasets import load_from_disk
    from helpers.dia2_data import recording, write_rows

    from dia_tpu.families import family_named

    rng = random.Random(3)
    rows = [recording(rng) | {"speaker": "AB"[i % 2]} for i in range(6)]
    codes = write_rows(tmp_path / "codes", rows, "pairs")
    cfg = dia2_config(dia2_model, codes, tmp_path / "run", "data.prompt_pairs=1.0", "data.max_audio_frames=80")
    family, table = family_named("dia2"), load_from_disk(str(codes))
    model = family.build(cfg.model, None)
    paired = family.items(table, cfg, model, train=True)
    plain = family.items(
        table, dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prompt_pairs=0.0)), model, train=True
    )
    delays = model.config.delays
    for i in range(len(table)):
        j = paired.partner(i)
        assert j != i and table[j]["speaker"] == table[i]["speaker"]
        a, b, frames, prefix = paired[i], plain[i], table[i]["frames"], table[j]["frames"]
        assert a["frames"] == prefix + frames
        for c, delay in enumerate(delays):
            # The prefix's codes, then the item's; its targets are the plain item's, shifted by the prefix.
            assert a["tokens"][2 + c, delay : delay + prefix].tolist() == [f[c] for f in table[j]["codes"]]
            assert torch.equal(
                a["tokens"][2 + c, delay + prefix : delay + prefix + frames], b["tokens"][2 + c, delay : delay + frames]
            )
            assert (
                torch.equal(a["audio_mask"][c, prefix:], b["audio_mask"][c]) and not a["audio_mask"][c, :prefix].any()
            )
        # Nothing of the prefix is taught; the item's new words (and its end) fall where they fall without it, and
        # from its first word on the same actions are the model's (before it, the script machine's state after the
        # prefix decides, not a script's start).
        new_words, alone = a["actions"].nonzero().flatten().tolist(), b["actions"].nonzero().flatten().tolist()
        assert new_words[-len(alone) :] == [t + prefix for t in alone]
        first = alone[0]
        assert not a["action_mask"][:prefix].any()
        assert torch.equal(a["action_mask"][prefix + first :], b["action_mask"][first:])
        # The prefix's words at their frames, as upstream lines a prefix up (the frame before, plus 3).
        assert new_words[: len(table[j]["words"])] == [w["start"] - 1 + 3 for w in table[j]["words"]]
    assert family.items(table, cfg, model, train=False).partners == {}  # held-out items are never prompted


def test_check_finds_what_will_train_badly_in_a_dia2_dataset(dia2_model, tmp_path, capsys):
    """`dia-tpu check` on a Dia2 run's dataset: recordings cut at the frame limit, words said before the word
    before them is fed, and (in another dataset) timings outside their recording, each named."""
    from helpers.dia2_data import CODEBOOKS, write_rows

    def row(frames: int, *words: tuple[str, int, int, int]) -> dict:
        said = [{"word": w, "start": s, "end": e, "speaker": k} for w, s, e, k in words]
        text = " ".join(f"[S{k}] {w}" for w, _, _, k in words)
        return {"text": text, "codes": [[0] * CODEBOOKS] * frames, "frames": frames, "words": said}

    fine = row(20, ("hello", 3, 8, 1), ("there", 10, 15, 1))
    long = row(60, ("hi", 3, 8, 1), ("friend", 50, 55, 2))
    hurried = row(20, ("hello", 3, 4, 1), ("there", 4, 9, 1))  # "[S1] hello" is 2 tokens: "there" is fed late
    good = write_rows(tmp_path / "good", [fine, long, hurried], "check-good")
    cfg = dia2_config(dia2_model, good, tmp_path / "run")
    cfg.save(tmp_path / "c.yaml")
    main(["check", "--config", str(tmp_path / "c.yaml"), "--min-speaker-seconds", "0"])
    said = capsys.readouterr().out
    assert f"{good}: 3 items, 2 findings" in said, said
    assert "1 of 3 recordings are longer than data.max_audio_frames=40 and are cut there" in said
    assert "never trained (e.g. dialogue_001 (60 frames))" in said
    assert "1 words start before the word before them has been fed (one token a frame), up to 2 frames late" in said
    assert "(e.g. dialogue_002)" in said

    outside = write_rows(tmp_path / "bad", [fine, row(20, ("hi", 3, 25, 1))], "check-bad")
    main(["check", "--config", str(tmp_path / "c.yaml"), f"data.dataset={outside}"])
    said = capsys.readouterr().out
    assert "1 recordings have word timings that do not fit them" in said
    assert "dialogue_001: word 'hi' ends at frame 25, after the recording's 20 frames" in said
