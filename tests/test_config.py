"""Loading the typed config: YAML plus dotted overrides, types coerced, every problem named in one error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dia_tpu.config import Config, ConfigError, DataConfig, TrainConfig, check_run_files, load, read_saved

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "demo.yaml"


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_demo_config_loads():
    cfg = load(DEMO)
    assert isinstance(cfg, Config)
    assert cfg.model.pretrained is None
    assert cfg.model.codec == str(CONFIGS.parent / "codecs" / "demo-dac")  # resolved against the config's folder
    assert cfg.model.architecture["delay_pattern"] == [0, 8, 9, 10, 11, 12, 13, 14, 15]
    assert cfg.data.max_text_tokens == 64 and cfg.train.batch_size == 4
    assert cfg.train.learning_rate == 3e-3 and isinstance(cfg.train.learning_rate, float)


def test_full_model_config_loads_without_network():
    cfg = load(CONFIGS / "dia-1.6b.yaml")
    assert cfg.model.pretrained == "nari-labs/Dia-1.6B-0626"
    assert cfg.train.mixed_precision == "bf16" and cfg.data.random_crop is True


def test_tpu_config_shards_and_its_batches_split_over_eight_chips():
    cfg = load(CONFIGS / "dia-1.6b-tpu-v5e.yaml")
    assert cfg.train.sharding == "fsdp" and cfg.train.batch_size % 8 == 0 and cfg.eval.batch_size % 8 == 0
    assert cfg.model.gradient_checkpointing  # without it 2 clips a chip exceed a v5e chip
    assert load(CONFIGS / "dia-1.6b.yaml").to_dict()["data"] == cfg.to_dict()["data"]


def test_a_mesh_without_sharding_is_refused():
    with pytest.raises(ConfigError, match="train.mesh_data=2: a mesh is for train.sharding=fsdp"):
        load(DEMO, ["train.mesh_data=2"])


def test_dotted_overrides_are_applied_with_the_declared_types():
    cfg = load(DEMO, ["train.learning_rate=3e-5", "output.dir=/x", "data.random_crop=true", "train.max_grad_norm=2"])
    assert cfg.train.learning_rate == 3e-5 and type(cfg.train.learning_rate) is float
    assert cfg.output.dir == "/x"
    assert cfg.data.random_crop is True
    assert cfg.train.max_grad_norm == 2.0 and type(cfg.train.max_grad_norm) is float
    assert cfg.train.batch_size == 4  # untouched fields keep the file's values


def test_override_can_set_a_nullable_field_and_a_list():
    cfg = load(DEMO, ["data.eval_dataset=/data/eval", "train.codebook_weights=[2, 1, 1, 1, 1, 1, 1, 1, 1]"])
    assert cfg.data.eval_dataset == "/data/eval"
    assert cfg.train.codebook_weights == [2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert load(DEMO, ["data.eval_dataset=null"]).data.eval_dataset is None


@pytest.mark.parametrize(
    "yaml_text, key, valid",
    [
        ("trian:\n  batch_size: 2\n", "trian", field_names(Config)),
        ("train:\n  batch_sise: 2\n", "train.batch_sise", field_names(TrainConfig)),
    ],
    ids=["top-level", "nested"],
)
def test_unknown_yaml_key_is_named_with_the_valid_keys(tmp_path, yaml_text, key, valid):
    path = tmp_path / "bad.yaml"
    path.write_text(DEMO.read_text() + yaml_text)
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert repr(key) in message
    assert all(name in message for name in valid)


@pytest.mark.parametrize(
    "override, key, valid",
    [
        ("optimiser.lr=1", "optimiser", field_names(Config)),
        ("data.max_frames=10", "data.max_frames", field_names(DataConfig)),
    ],
    ids=["top-level", "nested"],
)
def test_unknown_override_key_is_named_with_the_valid_keys(override, key, valid):
    with pytest.raises(ConfigError) as err:
        load(DEMO, [override])
    message = str(err.value)
    assert repr(key) in message
    assert all(name in message for name in valid)


def test_several_validation_problems_are_reported_in_one_error():
    overrides = [
        "train.mixed_precision=fp8",
        "train.batch_size=-1",
        "train.unconditional_frac=1.5",
        "eval.batch_size=0",
    ]
    with pytest.raises(ConfigError) as err:
        load(DEMO, overrides)
    message = str(err.value)
    for expected in (
        "train.mixed_precision",
        "'fp8'",
        "train.batch_size",
        "train.unconditional_frac",
        "eval.batch_size",
    ):
        assert expected in message


def test_type_errors_and_validation_problems_are_reported_together():
    overrides = ["train.learning_rate=fast", "train.mixed_precision=fp8", "train.batch_size=-1", "train.warmup=5"]
    with pytest.raises(ConfigError) as err:
        load(DEMO, overrides)
    message = str(err.value)
    for expected in ("train.learning_rate", "'fast'", "'fp8'", "train.batch_size", "train.warmup"):
        assert expected in message


def test_non_finite_numbers_and_bad_override_paths_are_reported():
    with pytest.raises(ConfigError) as err:
        load(DEMO, ["train.learning_rate=nan", "train.max_grad_norm=.inf", "train.batch_size.x=1"])
    message = str(err.value)
    for expected in ("train.learning_rate", "train.max_grad_norm", "train.batch_size.x"):
        assert expected in message


def test_type_errors_are_all_reported():
    with pytest.raises(ConfigError) as err:
        load(DEMO, ["train.learning_rate=fast", "train.batch_size=2.5", "data.random_crop=maybe", "train.nope=1"])
    message = str(err.value)
    for expected in ("train.learning_rate", "train.batch_size", "data.random_crop", "'train.nope'"):
        assert expected in message


def test_malformed_override_is_reported():
    with pytest.raises(ConfigError, match="train.batch_size"):
        load(DEMO, ["train.batch_size"])


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load(missing)


def test_save_then_load_round_trips(tmp_path):
    cfg = load(DEMO, ["train.learning_rate=3e-5", "train.adam_epsilon=1e-12", "data.eval_dataset=/e", "output.dir=/x"])
    cfg.save(tmp_path / "config.yaml")
    assert load(tmp_path / "config.yaml") == cfg


def test_paths_in_the_file_are_relative_to_it_and_overrides_to_the_cwd(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "voices").mkdir(parents=True)
    (project / "base").mkdir()
    (project / "run.yaml").write_text(
        "model: {pretrained: base, codec: descript/dac_44khz}\n"
        "data: {source: voices, dataset: codes}\n"
        "output: {dir: ../runs/x}\n"
        "samples: {prompts: [{name: a, text: hi, audio: voices/a.wav, transcript: hi}]}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load(project / "run.yaml", ["data.eval_dataset=held_out", "train.resume=auto"])
    assert cfg.model.pretrained == str(project / "base")  # exists beside the file: a local folder
    assert cfg.model.codec == "descript/dac_44khz"  # resolves to nothing there: a hub id, kept as written
    assert cfg.data.source == str(project / "voices")
    assert cfg.data.dataset == str(project / "codes")  # a plain path need not exist yet
    assert cfg.output.dir == str(tmp_path / "runs" / "x")
    assert cfg.samples.prompts[0].audio == str(project / "voices" / "a.wav")
    assert cfg.data.eval_dataset == str(tmp_path / "held_out")  # overrides: the current directory
    assert cfg.train.resume == "auto"


def test_a_saved_config_is_read_as_saved_without_checking_files(tmp_path):
    cfg = load(DEMO)
    assert Path(cfg.samples.prompts[1].audio).is_absolute() and Path(cfg.data.source).is_dir()
    saved = tmp_path / "config.yaml"
    cfg.save(saved)
    text = saved.read_text().replace(cfg.samples.prompts[1].audio, "gone/utt_000.flac")
    saved.write_text(text)
    again = read_saved(saved)
    assert again.samples.prompts[1].audio == "gone/utt_000.flac"
    assert check_run_files(again) == ["samples.prompts[1].audio: file not found: gone/utt_000.flac"]
    assert check_run_files(cfg) == []


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.optimizer=sgd", "train.optimizer: 'sgd' is not one of 'adamw', 'adamw_8bit'"),
        ("data.buckets=[64, x]", "data.buckets[1]: 'x' is not int"),
        ("model.lora.parts=[encoder, middle]", "model.lora.parts[1]: 'middle' is not one of 'encoder', 'decoder'"),
        ("train.codebook_weights=4", "train.codebook_weights: 4 is not a list of float"),
    ],
)
def test_choices_and_list_items_are_checked_against_the_declared_types(override, expected):
    with pytest.raises(ConfigError) as err:
        load(DEMO, [override])
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["eval.eval_every=4", "eval.audio.every=6"], "eval.audio.every: must be a multiple of eval.eval_every=4"),
        (["eval.audio.every=100", "eval.audio.asr=whisperx"], "eval.audio.asr: 'whisperx' is not one of"),
        (["eval.select_by=bleu"], "eval.select_by: 'bleu' is not one of loss, wer, cer, speaker_similarity"),
        (["eval.select_by=wer=-1"], "eval.select_by: the weight of wer must be > 0"),
        (["eval.select_by=wer"], "eval.select_by: 'wer' needs audio figures at every evaluation"),
        (
            ["eval.audio.every=100", "eval.select_by=speaker_similarity", "eval.audio.speaker=none"],
            "eval.select_by: speaker_similarity needs eval.audio.speaker",
        ),
        (["eval.audio.every=100", "data.eval_size=0"], "eval.audio.every: audio is judged at evaluations"),
    ],
)
def test_audio_evaluation_settings_are_checked(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load(DEMO, overrides)
    assert expected in str(err.value)


def test_a_quality_judge_is_named_as_mos_with_a_model():
    with pytest.raises(ConfigError) as err:
        load(DEMO, ["eval.audio.every=100", "eval.audio.quality=utmos", "eval.select_by=mos"])
    assert "eval.audio.quality: 'utmos' is not none or mos:<hub id or folder>" in str(err.value)
    assert "eval.select_by: mos needs eval.audio" not in str(err.value)


def test_yaml_that_cannot_be_read_is_one_named_problem(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(DEMO, ["train.learning_rate=[1,"])
    assert str(caught.value).splitlines()[1] == (
        "  - override 'train.learning_rate=[1,': not readable as YAML: while parsing a flow node"
    )
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"^[^\n]*deep\.yaml: nested too deeply to read as a config$"):
        load(deep)
    with pytest.raises(ConfigError, match=r"override 'train\.learning_rate=\[\[\[+\.\.\.': nested too deeply"):
        load(DEMO, ["train.learning_rate=" + "[" * 5000 + "]" * 5000])
