"""Shared by the tests: tiny models that build and run on CPU in well under a second, the bundled sample
prepared once per session, a tiny training config built from the demo's, and a tiny random Whisper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from helpers.dia2_data import dia2_folder, write_dataset
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import DiaConfig, DiaForConditionalGeneration

from dia_tpu.config import Config, load
from dia_tpu.data.prepare import prepare

DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]


def tiny_dia_config(delay_pattern: list[int] = DELAY) -> DiaConfig:
    """A 1-layer Dia with the real vocabularies, special tokens and delay pattern."""
    encoder = dict(
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    decoder = dict(
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        cross_num_attention_heads=2,
        cross_num_key_value_heads=2,
        cross_head_dim=16,
        cross_hidden_size=32,
        num_channels=len(delay_pattern),
    )
    return DiaConfig(encoder_config=encoder, decoder_config=decoder, delay_pattern=list(delay_pattern))


@pytest.fixture(scope="session")
def tiny_dia() -> DiaForConditionalGeneration:
    torch.manual_seed(0)
    return DiaForConditionalGeneration(tiny_dia_config()).eval()


ROOT = Path(__file__).resolve().parents[1]

# A seeded random DAC (0.5 M parameters) in place of the demo's trained one: for the tests that need the
# codec's shapes and rate, not its sound. Its codes carry no meaning.
RANDOM_CODEC = [
    "model.codec=null",
    "model.codec_architecture={encoder_hidden_size: 8, decoder_hidden_size: 32, sampling_rate: 44100}",
]

# A 2-layer Dia far smaller than the demo's, the random codec, cropped audio, every random per-item
# decision switched on.
TINY = [
    *RANDOM_CODEC,
    "model.architecture.encoder_config.hidden_size=64",
    "model.architecture.encoder_config.intermediate_size=128",
    "model.architecture.encoder_config.head_dim=16",
    "model.architecture.decoder_config.hidden_size=64",
    "model.architecture.decoder_config.intermediate_size=128",
    "model.architecture.decoder_config.head_dim=16",
    "model.architecture.decoder_config.cross_head_dim=16",
    "model.architecture.decoder_config.cross_hidden_size=64",
    "data.max_audio_frames=48",
    "data.random_crop=true",
    "train.unconditional_frac=0.3",
    "samples.temperature=0.7",  # the tests' runs sample at a temperature of their own, whatever the demo's
    # fp32 on every machine: the demo config's `auto` would train in bf16 where the CPU has it, and the tests'
    # exact comparisons are of fp32 runs.
    "train.mixed_precision=no",
    "train.batch_size=2",
    "train.warmup_steps=3",
    "train.learning_rate=1e-3",
    "train.log_every=5",
    "train.report_to=tensorboard",
    "eval.batch_size=2",
    "eval.eval_on_start=false",
    "samples.every=0",
]


@pytest.fixture(scope="session")
def codes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codes") / "sample"
    if os.environ.get("PJRT_DEVICE"):
        # On XLA every clip length compiles the codec anew (a minute for the sample). Its codes equal the CPU's
        # (test_xla.py), so the XLA run prepares them on the CPU, in a process where Accelerate ignores torch_xla.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dia_tpu.cli",
                "prepare",
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--input",
                str(ROOT / "data/sample"),
                "--output",
                str(out),
                *RANDOM_CODEC,
            ],
            env={**os.environ, "USE_TORCH_XLA": "0"},
            check=True,
            capture_output=True,
        )
    else:
        prepare(load(ROOT / "configs/demo.yaml", RANDOM_CODEC), ROOT / "data/sample", out)
    return out


@pytest.fixture(scope="session")
def dia2_model(tmp_path_factory) -> Path:
    """The tiny Dia2 fixture with a tokenizer and a Mimi inside its folder."""
    return dia2_folder(ROOT / "tests/fixtures/dia2/tiny", tmp_path_factory.mktemp("dia2") / "model")


@pytest.fixture(scope="session")
def dia2_codes(tmp_path_factory) -> Path:
    """A prepared Dia2 dataset: 24 recordings of codes and timed words."""
    return write_dataset(tmp_path_factory.mktemp("dia2") / "codes", 24, seed=0)


def reset_accelerate() -> None:
    """Forget the process-wide Accelerate state, so the next in-process run sets its own, as a new launch would."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


def two_process_launch(port: int) -> list[str]:
    """`accelerate launch` of two CPU processes (gloo), as the README's command runs them, up to the script: the
    environment adds ACCELERATE_USE_CPU=1."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


def tiny(codes_dir: Path, out: Path, *extra: str):
    return load(ROOT / "configs/demo.yaml", [*TINY, f"data.dataset={codes_dir}", f"output.dir={out}", *extra])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    found = {}
    for sub in (run_dir / "logs").iterdir():
        acc = EventAccumulator(str(sub))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return found


def prepare_config(*overrides: str) -> Config:
    """The demo's config with the random codec and `overrides`, for prepare tests."""
    return load(ROOT / "configs/demo.yaml", [*RANDOM_CODEC, *overrides])


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A randomly initialised two-layer Whisper with a byte-level tokenizer, saved as a hub checkpoint is."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    out = tmp_path_factory.mktemp("whisper")
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(
        str(out / "vocab.json"),
        str(out / "merges.txt"),
        unk_token=specials[0],
        bos_token=specials[0],
        eos_token=specials[0],
        pad_token=specials[0],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    processor.save_pretrained(out)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in specials}
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        encoder_layers=1,
        decoder_layers=1,
        d_model=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_target_positions=24,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.save_pretrained(out)
    return out
