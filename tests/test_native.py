"""The native Nari Labs <-> transformers state-dict mapping: bit-exact both ways, strict, loadable."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import DiaConfig, DiaForConditionalGeneration

from dia_tpu.native import (
    NativeFormatError,
    clean_native_keys,
    hf_config_to_native,
    hf_to_native,
    load_native,
    native_config_to_hf,
    native_to_hf,
)

DELAY_9 = [0, 8, 9, 10, 11, 12, 13, 14, 15]
# Every width distinct, so a swapped dimension cannot go unnoticed.
ENC = dict(layers=2, d=24, inter=40, heads=2, head_dim=8, vocab=256)
DEC = dict(layers=2, d=32, inter=48, heads=4, kv=2, head_dim=8, cross_heads=3, cross_head_dim=12, vocab=1028)


def tiny_config(delay: list[int]) -> DiaConfig:
    encoder = dict(
        num_hidden_layers=ENC["layers"], hidden_size=ENC["d"], intermediate_size=ENC["inter"],
        num_attention_heads=ENC["heads"], num_key_value_heads=ENC["heads"], head_dim=ENC["head_dim"],
        vocab_size=ENC["vocab"],
    )  # fmt: skip
    decoder = dict(
        num_hidden_layers=DEC["layers"], hidden_size=DEC["d"], intermediate_size=DEC["inter"],
        num_attention_heads=DEC["heads"], num_key_value_heads=DEC["kv"], head_dim=DEC["head_dim"],
        cross_num_attention_heads=DEC["cross_heads"], cross_num_key_value_heads=DEC["cross_heads"],
        cross_head_dim=DEC["cross_head_dim"], cross_hidden_size=ENC["d"], vocab_size=DEC["vocab"],
        num_channels=len(delay),
    )  # fmt: skip
    return DiaConfig(encoder_config=encoder, decoder_config=decoder, delay_pattern=list(delay))


def tiny_native(channels: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random state dict in the native DenseGeneral layout, written out from the format's description."""
    e, d, c, v = ENC["d"], DEC["d"], channels, DEC["vocab"]
    shapes = {"encoder.embedding.weight": (ENC["vocab"], e), "encoder.norm.weight": (e,), "decoder.norm.weight": (d,)}
    for i in range(ENC["layers"]):
        p, h, hd = f"encoder.layers.{i}", ENC["heads"], ENC["head_dim"]
        shapes |= {f"{p}.pre_sa_norm.weight": (e,), f"{p}.post_sa_norm.weight": (e,)}
        shapes |= {f"{p}.self_attention.{n}_proj.weight": (e, h, hd) for n in "qkv"}
        shapes |= {f"{p}.self_attention.o_proj.weight": (h, hd, e)}
        shapes |= {f"{p}.mlp.wi_fused.weight": (e, 2, ENC["inter"]), f"{p}.mlp.wo.weight": (ENC["inter"], e)}
    for i in range(DEC["layers"]):
        p, hd, ch, chd = f"decoder.layers.{i}", DEC["head_dim"], DEC["cross_heads"], DEC["cross_head_dim"]
        shapes |= {f"{p}.{n}.weight": (d,) for n in ("pre_sa_norm", "pre_ca_norm", "pre_mlp_norm")}
        shapes |= {f"{p}.self_attention.q_proj.weight": (d, DEC["heads"], hd)}
        shapes |= {f"{p}.self_attention.{n}_proj.weight": (d, DEC["kv"], hd) for n in "kv"}
        shapes |= {f"{p}.self_attention.o_proj.weight": (DEC["heads"], hd, d)}
        shapes |= {f"{p}.cross_attention.q_proj.weight": (d, ch, chd)}
        shapes |= {f"{p}.cross_attention.{n}_proj.weight": (e, ch, chd) for n in "kv"}
        shapes |= {f"{p}.cross_attention.o_proj.weight": (ch, chd, d)}
        shapes |= {f"{p}.mlp.wi_fused.weight": (d, 2, DEC["inter"]), f"{p}.mlp.wo.weight": (DEC["inter"], d)}
    shapes |= {f"decoder.embeddings.{k}.weight": (v, d) for k in range(c)}
    shapes |= {"decoder.logits_dense.weight": (d, c, v)}
    gen = torch.Generator().manual_seed(channels)
    return {k: torch.randn(s, generator=gen).to(dtype) for k, s in shapes.items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("delay", [DELAY_9, DELAY_9 * 2], ids=["9ch", "18ch"])
def test_native_loads_strictly_and_round_trips_bit_exact(delay):
    config = tiny_config(delay)
    native = tiny_native(len(delay))
    hf = native_to_hf(native, config)
    model = DiaForConditionalGeneration(config).eval()
    model.load_state_dict(hf, strict=True)
    assert_identical(hf_to_native(model.state_dict(), config), native)

    # The layouts mean the same computation: the head, the channel embeddings, the gated MLP, the head split.
    # Random unit weights make large activations, so the tolerance is loose; a wrong layout is off by O(1).
    close = dict(rtol=1e-4, atol=1e-3)
    h = torch.randn(DEC["d"])
    head = model.logits_dense(h).view(len(delay), DEC["vocab"])
    torch.testing.assert_close(head, torch.einsum("d,dcv->cv", h, native["decoder.logits_dense.weight"]), **close)
    table = model.model.decoder.embeddings.embed.weight.view(len(delay), DEC["vocab"], DEC["d"])
    assert torch.equal(table[5], native["decoder.embeddings.5.weight"])
    wi, wo = native["decoder.layers.1.mlp.wi_fused.weight"], native["decoder.layers.1.mlp.wo.weight"]
    gate, up = torch.einsum("d,dkf->kf", h, wi)
    torch.testing.assert_close(model.model.decoder.layers[1].mlp(h), (F.silu(gate) * up) @ wo, **close)
    q = torch.einsum("d,dnh->nh", h, native["decoder.layers.0.cross_attention.q_proj.weight"])
    torch.testing.assert_close(model.model.decoder.layers[0].cross_attention.q_proj(h).view_as(q), q, **close)


def test_hf_round_trips_through_native_bit_exact():
    torch.manual_seed(0)
    config = tiny_config(DELAY_9)
    hf = DiaForConditionalGeneration(config).to(torch.bfloat16).state_dict()
    assert_identical(native_to_hf(hf_to_native(hf, config), config), hf)


def test_compiled_fp16_checkpoint_imports_with_dtype_kept(caplog):
    native = tiny_native(9, torch.float16)
    wrapped = {f"module._orig_mod.{k}" if i % 2 else f"_orig_mod.{k}": t for i, (k, t) in enumerate(native.items())}
    with caplog.at_level(logging.INFO, logger="dia_tpu.native"):
        cleaned = clean_native_keys(wrapped)
    assert "_orig_mod." in caplog.text
    hf = native_to_hf(cleaned, tiny_config(DELAY_9))
    assert {t.dtype for t in hf.values()} == {torch.float16}
    assert_identical(hf_to_native(hf, tiny_config(DELAY_9)), native)


def test_extra_missing_and_misshaped_keys_are_all_named():
    config = tiny_config(DELAY_9)
    native = tiny_native(9)
    native["decoder.extra.weight"] = torch.zeros(3)
    del native["encoder.layers.1.mlp.wo.weight"]
    native["decoder.norm.weight"] = torch.zeros(7)
    with pytest.raises(NativeFormatError) as err:
        native_to_hf(native, config)
    for name in ("decoder.extra.weight", "encoder.layers.1.mlp.wo.weight", "decoder.norm.weight: (7,)"):
        assert name in str(err.value)
    hf = native_to_hf(tiny_native(9), config)
    hf["model.decoder.bogus"] = hf.pop("logits_dense.weight")
    with pytest.raises(NativeFormatError, match=r"unmapped: \['model.decoder.bogus'\].*missing: \['logits_dense"):
        hf_to_native(hf, config)


def test_mixed_channel_dtypes_are_refused():
    native = tiny_native(9)
    native["decoder.embeddings.3.weight"] = native["decoder.embeddings.3.weight"].half()
    with pytest.raises(NativeFormatError, match="mix dtypes"):
        native_to_hf(native, tiny_config(DELAY_9))


@pytest.mark.parametrize("holder", [None, "model", "state_dict"])
def test_load_native_reads_a_saved_pth(tmp_path, holder):
    native = tiny_native(9, torch.bfloat16)
    path = tmp_path / "dia-v0_1.pth"
    torch.save(native if holder is None else {holder: native, "step": 3}, path)
    assert_identical(load_native(path), native)


def test_native_config_round_trips():
    native = {
        "version": "0.1",
        "model": {
            "encoder": {"n_layer": 12, "n_embd": 1024, "n_hidden": 4096, "n_head": 16, "head_dim": 128},
            "decoder": {
                "n_layer": 18,
                "n_embd": 2048,
                "n_hidden": 8192,
                "gqa_query_heads": 16,
                "kv_heads": 4,
                "gqa_head_dim": 128,
                "cross_query_heads": 16,
                "cross_head_dim": 128,
            },  # fmt: skip
            "src_vocab_size": 256,
            "tgt_vocab_size": 1028,
            "normalization_layer_epsilon": 1e-5,
            "rope_min_timescale": 1,
            "rope_max_timescale": 10000,
        },  # fmt: skip
        "data": {
            "text_length": 1024,
            "audio_length": 3072,
            "channels": 9,
            "audio_eos_value": 1024,
            "audio_pad_value": 1025,
            "audio_bos_value": 1026,
            "delay_pattern": DELAY_9,
        },  # fmt: skip
    }
    config = native_config_to_hf(native)
    assert config.to_diff_dict() == DiaConfig().to_diff_dict()  # the 1.6B native config is transformers' default
    assert hf_config_to_native(config) == native
    tiny = tiny_config(DELAY_9 * 2)
    assert native_config_to_hf(hf_config_to_native(tiny)).to_dict() == tiny.to_dict()
    native["model"]["decoder"]["low_rank_dim"] = 8
    with pytest.raises(NativeFormatError, match="model.decoder.low_rank_dim"):
        native_config_to_hf(native)
