"""Tiny models shared by the tests: small enough to build and run on CPU in well under a second."""

from __future__ import annotations

import pytest
import torch
from transformers import DiaConfig, DiaForConditionalGeneration

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
