"""Shared by the tests: tiny models that build and run on CPU in well under a second, the bundled sample
prepared once per session, and a tiny training config built from the demo's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import DiaConfig, DiaForConditionalGeneration

from dia_tpu.config import Config, load
from dia_tpu.data.prepare import prepare

DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]


def tiny_dia_config(delay_pattern: list[int] = DELAY) -> DiaConfig:
    """A 1-layer Dia with the real vocabularies, special tokens and delay pattern."""
    encoder = dict(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16,
    )  # fmt: skip
    decoder = dict(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, cross_num_attention_heads=2, cross_num_key_value_heads=2, cross_head_dim=16,
        cross_hidden_size=32, num_channels=len(delay_pattern),
    )  # fmt: skip
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
    "train.batch_size=2",
    "train.warmup_steps=3",
    "train.learning_rate=1e-3",
    "train.log_every=5",
    "train.report_to=tensorboard",
    "eval.batch_size=2",
    "samples.every=0",
]


@pytest.fixture(scope="session")
def codes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codes") / "sample"
    prepare(load(ROOT / "configs/demo.yaml", RANDOM_CODEC), ROOT / "data/sample", out)
    return out


def reset_accelerate() -> None:
    """Forget the process-wide Accelerate state, so the next in-process run sets its own, as a new launch would."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()


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
