"""`dia-tpu check`: the findings about a prepared dataset that its users would otherwise learn from a bad run."""

from __future__ import annotations

import shutil

import pytest
from conftest import RANDOM_CODEC, ROOT, tiny
from datasets import load_from_disk

from dia_tpu.cli import main as cli
from dia_tpu.config import ConfigError, load
from dia_tpu.data.check import check_dataset
from dia_tpu.data.prepare import prepare
from dia_tpu.training.recipe import train


def test_the_bundled_sample_under_tight_limits(codes_dir):
    table = load_from_disk(str(codes_dir))
    frames, speakers = table["frames"], table["speaker"]
    longer = sum(n > 200 for n in frames)
    assert 0 < longer < len(frames)

    def findings(*overrides: str, **options) -> str:
        cfg = load(ROOT / "configs/demo.yaml", [*RANDOM_CODEC, f"data.dataset={codes_dir}", *overrides])
        items, found = check_dataset(cfg, **options)
        assert items == 32
        return "\n".join(map(str, found))

    text = findings("data.max_audio_frames=200")
    assert f"{longer} of 32 clips are longer than data.max_audio_frames=200 and are cropped, so they teach no" in text
    assert "16 transcripts start with [S2]" in text  # every S2 line of the sample
    assert "2 of 2 speakers have under 60 s of audio (e.g. S" in text
    assert "outside ASCII" not in text  # a model trained from scratch has seen nothing anyway
    # The limits that make each finding go away.
    assert "cropped" not in findings() and "speakers" not in findings(min_speaker_seconds=10)
    # Voice-cloning pairs, prompts of at most 177 frames in 400 (S2 has one clip that short, S1 five): the clips
    # with no short partner of their speaker, and those a prompt crops, counted here from the frames themselves.
    pairs = findings("data.prompt_pairs=0.5", "data.prompt_max_frames=177", "data.max_audio_frames=400")
    partners = [
        [m for j, (m, t) in enumerate(zip(frames, speakers, strict=True)) if t == s and m <= 177 and j != i]
        for i, s in enumerate(speakers)
    ]
    alone = sum(not found for found in partners)
    crowded = sum(bool(found) and min(found) + n > 400 for n, found in zip(frames, partners, strict=True))
    assert 0 < alone < 32 and 0 < crowded
    assert f"{alone} items can never be trained with a voice prompt" in pairs
    assert f"{crowded} items are cropped whenever they are prompted" in pairs


def test_data_that_does_not_fit_the_model_is_named(codes_dir):
    cfg = load(ROOT / "configs/demo.yaml", [f"data.dataset={codes_dir}", "data.max_audio_frames=1010"])
    text = "\n".join(map(str, check_dataset(cfg)[1]))
    # Prepared with the random codec, checked against the demo's trained one; 1010 + 2 + 15 > 1024 positions.
    assert "was encoded with codec" in text and "but model.codec is" in text
    assert "data.max_audio_frames=1010 plus BOS, EOS and the delay (17) is more than the model's decoder" in text


def test_training_refuses_data_of_another_codec_before_its_first_step(codes_dir, tmp_path):
    other = "model.codec_architecture={encoder_hidden_size: 8, decoder_hidden_size: 16, sampling_rate: 44100}"
    with pytest.raises(ConfigError, match="prepared data does not match the model:\n  - .* was encoded with codec"):
        train(tiny(codes_dir, tmp_path / "run", other))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tags_long_and_unseen_text_are_found(tmp_path, tiny_dia):
    tiny_dia.save_pretrained(tmp_path / "pretrained")
    source = tmp_path / "src"
    (source / "audio").mkdir(parents=True)
    texts = ["Café au lait, s'il vous plaît.", "[S1] One. [S1] Two.", "[S1] Привет, как дела? Всё хорошо, спасибо!"]
    for i in range(3):
        shutil.copy(ROOT / f"data/sample/audio/utt_00{i}.flac", source / "audio" / f"{i}.flac")
    (source / "metadata.csv").write_text("file|text\n" + "".join(f"audio/{i}.flac|{t}\n" for i, t in enumerate(texts)))
    codes = tmp_path / "codes"
    prepare(load(ROOT / "configs/demo.yaml", RANDOM_CODEC), source, codes)
    cfg = load(
        ROOT / "configs/demo.yaml",
        [
            *RANDOM_CODEC,
            f"data.dataset={codes}",
            "data.max_text_tokens=48",
            f"model.pretrained={tmp_path / 'pretrained'}",
        ],
    )
    text = "\n".join(map(str, check_dataset(cfg)[1]))
    assert "1 transcripts have no [S1]/[S2] tag (e.g. audio/0.flac)" in text
    assert "1 transcripts give the same speaker tag twice in a row (e.g. audio/1.flac)" in text
    # The Russian line: 42 characters, 73 bytes.
    assert "1 transcripts are longer than data.max_text_tokens=48 bytes; 1 of them mostly in a script of 2-3" in text
    assert "2 transcripts hold characters outside ASCII" in text and "'é'" in text


def test_the_command_prints_its_findings_and_names_a_missing_dataset(codes_dir, tmp_path, capsys):
    cli(["check", "--config", str(ROOT / "configs/demo.yaml"), *RANDOM_CODEC, f"data.dataset={codes_dir}"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{codes_dir}: 32 items, 2 findings"  # [S2] first, and two short speakers
    assert len(out) == 3 and all(line.startswith("  - ") for line in out[1:])
    with pytest.raises(SystemExit) as stop:
        cli(["check", "--config", str(ROOT / "configs/demo.yaml"), f"data.dataset={tmp_path}"])
    assert stop.value.code == (
        f"dia-tpu check: error: data.dataset: {tmp_path} is not a prepared dataset; run dia-tpu prepare first"
    )


def test_native_weights_beside_another_releases_config_are_found(codes_dir, tmp_path, tiny_dia):
    """A Nari Labs checkpoint folder whose config.json is not the one its weights were saved with (here: a
    0626-schema config of a model one decoder layer deeper beside v0.1 weights)."""
    import json

    from conftest import tiny_dia_config
    from transformers import DiaForConditionalGeneration

    from dia_tpu.model.native_config import hf_config_to_native
    from dia_tpu.model.native_files import save_native

    folder = tmp_path / "native"
    save_native(tiny_dia, folder, "v0.1")

    def findings() -> str:
        overrides = [*RANDOM_CODEC, f"data.dataset={codes_dir}", f"model.pretrained={folder}"]
        cfg = load(ROOT / "configs/demo.yaml", overrides)
        return "\n".join(map(str, check_dataset(cfg)[1]))

    assert "model.pretrained" not in findings()  # the weights and the config they were saved with
    deeper = tiny_dia_config()
    deeper.decoder_config.num_hidden_layers = 2
    deeper = DiaForConditionalGeneration(deeper).config
    (folder / "config.json").write_text(json.dumps(hf_config_to_native(deeper, "0626")))
    text = findings()
    assert f"model.pretrained {folder}: the weights do not match its config.json (the 0626" in text
    assert "dia-v0_1.pth (native layout) does not match the config's layout; missing: ['decoder.layers.1." in text
