"""Native Nari Labs checkpoints: the state-dict mapping (bit-exact both ways, strict), both config schemas, and
reading, detecting, loading and saving whole checkpoints (files, folders, hub ids)."""

from __future__ import annotations

import json
import logging
import re

import huggingface_hub
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import DiaConfig, DiaForConditionalGeneration

from dia_tpu.artifacts.native import is_native_source
from dia_tpu.model.native import clean_native_keys, hf_to_native, native_to_hf
from dia_tpu.model.native_config import NativeFormatError, hf_config_to_native, native_config_to_hf
from dia_tpu.model.native_files import load_native, load_native_model, read_native, save_native

DELAY_9 = [0, 8, 9, 10, 11, 12, 13, 14, 15]
# Every width distinct, so a swapped dimension cannot go unnoticed.
ENC = dict(layers=2, d=24, inter=40, heads=2, head_dim=8, vocab=256)
DEC = dict(layers=2, d=32, inter=48, heads=4, kv=2, head_dim=8, cross_heads=3, cross_head_dim=12, vocab=1028)


def tiny_config(delay: list[int]) -> DiaConfig:
    encoder = dict(
        num_hidden_layers=ENC["layers"],
        hidden_size=ENC["d"],
        intermediate_size=ENC["inter"],
        num_attention_heads=ENC["heads"],
        num_key_value_heads=ENC["heads"],
        head_dim=ENC["head_dim"],
        vocab_size=ENC["vocab"],
    )
    decoder = dict(
        num_hidden_layers=DEC["layers"],
        hidden_size=DEC["d"],
        intermediate_size=DEC["inter"],
        num_attention_heads=DEC["heads"],
        num_key_value_heads=DEC["kv"],
        head_dim=DEC["head_dim"],
        cross_num_attention_heads=DEC["cross_heads"],
        cross_num_key_value_heads=DEC["cross_heads"],
        cross_head_dim=DEC["cross_head_dim"],
        cross_hidden_size=ENC["d"],
        vocab_size=DEC["vocab"],
        num_channels=len(delay),
    )
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
    q_w = native["decoder.layers.0.cross_attention.q_proj.weight"]
    q = torch.einsum("d,dnh->nh", h, q_w)
    torch.testing.assert_close(model.model.decoder.layers[0].cross_attention.q_proj(h).view_as(q), q, **close)
    # Each wrong layout misses by 10 or more (the tolerance here is 0.1 at most): a vocabulary-major head, gate
    # and up swapped, the head split transposed.
    vocabulary_major = torch.einsum("d,dcv->vc", h, native["decoder.logits_dense.weight"]).reshape_as(head)
    assert (head - vocabulary_major).abs().max() > 1
    assert (model.model.decoder.layers[1].mlp(h) - (F.silu(up) * gate) @ wo).abs().max() > 1
    transposed = torch.einsum("d,dnh->hn", h, q_w).reshape_as(q)
    assert (model.model.decoder.layers[0].cross_attention.q_proj(h).view_as(q) - transposed).abs().max() > 1


def test_hf_round_trips_through_native_bit_exact():
    torch.manual_seed(0)
    config = tiny_config(DELAY_9)
    hf = DiaForConditionalGeneration(config).to(torch.bfloat16).state_dict()
    assert_identical(native_to_hf(hf_to_native(hf, config), config), hf)


def test_compiled_fp16_checkpoint_imports_with_dtype_kept(caplog):
    native = tiny_native(9, torch.float16)
    wrapped = {f"module._orig_mod.{k}" if i % 2 else f"_orig_mod.{k}": t for i, (k, t) in enumerate(native.items())}
    with caplog.at_level(logging.INFO, logger="dia_tpu.model.native"):
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
            },
            "src_vocab_size": 256,
            "tgt_vocab_size": 1028,
            "normalization_layer_epsilon": 1e-5,
            "rope_min_timescale": 1,
            "rope_max_timescale": 10000,
        },
        "data": {
            "text_length": 1024,
            "audio_length": 3072,
            "channels": 9,
            "audio_eos_value": 1024,
            "audio_pad_value": 1025,
            "audio_bos_value": 1026,
            "delay_pattern": DELAY_9,
        },
    }
    config = native_config_to_hf(native)
    assert config.to_diff_dict() == DiaConfig().to_diff_dict()  # the 1.6B native config is transformers' default
    assert hf_config_to_native(config) == native
    tiny = tiny_config(DELAY_9 * 2)
    assert native_config_to_hf(hf_config_to_native(tiny)).to_dict() == tiny.to_dict()
    native["model"]["decoder"]["low_rank_dim"] = 8
    with pytest.raises(NativeFormatError, match="model.decoder.low_rank_dim"):
        native_config_to_hf(native)


def grouped_config(delay: list[int]) -> DiaConfig:
    """`tiny_config` with grouped key/value heads in the encoder and cross-attention: the 0626 schema has them."""
    config = tiny_config(delay)
    config.encoder_config.num_key_value_heads = 1
    config.decoder_config.cross_num_key_value_heads = 1
    return config


def fixed_logits(model: DiaForConditionalGeneration) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    channels = model.config.decoder_config.num_channels
    text = torch.randint(0, ENC["vocab"], (2, 7), generator=gen)
    audio = torch.randint(0, 1024, (2, 5, channels), generator=gen)
    with torch.no_grad():
        return model(input_ids=text, decoder_input_ids=audio).logits


def write_checkpoint(folder, config_dict: dict, weights: dict[str, torch.Tensor], name: str = "dia-v0_1.pth"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict))
    path = folder / name
    if name.endswith(".safetensors"):
        save_file(weights, path)
    else:
        torch.save(weights, path)
    return path


@pytest.mark.parametrize("schema", ["v0.1", "0626"])
@pytest.mark.parametrize("delay", [DELAY_9, DELAY_9 * 2], ids=["9ch", "18ch"])
def test_save_native_then_load_is_bit_identical(tmp_path, schema, delay):
    torch.manual_seed(0)
    config = tiny_config(delay) if schema == "v0.1" else grouped_config(delay)
    model = DiaForConditionalGeneration(config).eval()
    weights = save_native(model, tmp_path / "out", schema)

    assert sorted(p.name for p in weights.parent.iterdir()) == sorted(["config.json", weights.name])
    assert weights.name == {"v0.1": "dia-v0_1.pth", "0626": "model.pth"}[schema]
    assert_identical(load_native(weights), hf_to_native(model.state_dict(), config))
    loaded = load_native_model(weights if schema == "0626" else weights.parent)  # a file and a folder both work
    assert loaded.config.to_dict() == config.to_dict()
    assert_identical(loaded.state_dict(), model.state_dict())
    assert torch.equal(fixed_logits(loaded), fixed_logits(model))


def test_save_native_keeps_the_model_dtype_and_loading_upcasts_exactly(tmp_path):
    torch.manual_seed(0)
    model = DiaForConditionalGeneration(tiny_config(DELAY_9)).to(torch.bfloat16)
    weights = save_native(model, tmp_path, "0626")
    assert {t.dtype for t in load_native(weights).values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = load_native_model(tmp_path)
    assert {t.dtype for t in loaded.state_dict().values()} == {torch.float32}
    assert_identical(loaded.state_dict(), {k: v.float() for k, v in model.state_dict().items()})


def test_save_native_refuses_what_the_schema_cannot_express(tmp_path):
    model = DiaForConditionalGeneration(grouped_config(DELAY_9))
    with pytest.raises(NativeFormatError, match="encoder key/value heads != heads.*cross key/value heads != heads"):
        save_native(model, tmp_path, "v0.1")
    assert not any(tmp_path.iterdir())


def native_0626_1p6b() -> dict:
    """Dia-1.6B-0626's `config.json`, written out from the schema's description."""
    shared = dict(hidden_act="silu", initializer_range=0.02, norm_eps=1e-5, rope_scaling=None, rope_theta=10000.0)
    encoder = shared | dict(
        head_dim=128,
        hidden_size=1024,
        intermediate_size=4096,
        max_position_embeddings=1024,
        model_type="dia_encoder",
        num_attention_heads=16,
        num_hidden_layers=12,
        num_key_value_heads=16,
        vocab_size=256,
    )
    decoder = shared | dict(
        cross_head_dim=128,
        cross_hidden_size=1024,
        cross_num_attention_heads=16,
        cross_num_key_value_heads=16,
        head_dim=128,
        hidden_size=2048,
        intermediate_size=8192,
        max_position_embeddings=3072,
        model_type="dia_decoder",
        num_attention_heads=16,
        num_channels=9,
        num_hidden_layers=18,
        num_key_value_heads=4,
        vocab_size=1028,
    )
    return dict(
        architectures=["DiaForConditionalGeneration"],
        bos_token_id=1026,
        decoder_config=decoder,
        delay_pattern=DELAY_9,
        encoder_config=encoder,
        eos_token_id=1024,
        initializer_range=0.02,
        is_encoder_decoder=True,
        model_type="dia",
        norm_eps=1e-5,
        pad_token_id=1025,
        torch_dtype="float32",
        transformers_version="4.53.0.dev0",
    )


def test_0626_config_round_trips():
    native = native_0626_1p6b()
    config = native_config_to_hf(native)
    assert config.to_diff_dict() == DiaConfig().to_diff_dict()  # the 1.6B is transformers' default here too
    assert hf_config_to_native(config, "0626") == native | {"transformers_version": transformers.__version__}
    for tiny in (tiny_config(DELAY_9 * 2), grouped_config(DELAY_9)):
        assert native_config_to_hf(hf_config_to_native(tiny, "0626")).to_dict() == tiny.to_dict()

    native["encoder_config"]["rope_scaling"] = {"type": "linear", "factor": 2.0}
    native["decoder_config"]["low_rank_dim"] = 8
    del native["decoder_config"]["num_channels"]
    with pytest.raises(NativeFormatError) as err:
        native_config_to_hf(native)
    for name in (
        "unknown decoder_config.low_rank_dim",
        "missing decoder_config.num_channels",
        "encoder_config.rope_scaling={",
    ):
        assert name in str(err.value)
    with pytest.raises(NativeFormatError, match="delay_pattern has 18 entries for decoder_config.num_channels=9"):
        native_config_to_hf(native_0626_1p6b() | {"delay_pattern": DELAY_9 * 2})


def test_configs_of_neither_schema_are_refused_naming_what_was_found():
    with pytest.raises(NativeFormatError, match=r"found \['hidden', 'layers'\]"):
        native_config_to_hf({"layers": 2, "hidden": 8})
    with pytest.raises(NativeFormatError, match="unknown encoder_config.rope_parameters"):  # a transformers 5 export
        native_config_to_hf(DiaConfig().to_dict())
    with pytest.raises(NativeFormatError, match="unknown native config schema"):
        hf_config_to_native(DiaConfig(), "0.2")


def test_transformers_layout_weights_beside_a_native_config_load_as_they_are(tmp_path):
    torch.manual_seed(0)
    config = grouped_config(DELAY_9)
    model = DiaForConditionalGeneration(config).eval()
    write_checkpoint(tmp_path, hf_config_to_native(config, "0626"), model.state_dict(), "model.safetensors")
    read_config, state = read_native(tmp_path)
    assert read_config.to_dict() == config.to_dict()
    assert_identical(state, model.state_dict())
    assert torch.equal(fixed_logits(load_native_model(tmp_path)), fixed_logits(model))


def test_is_native_source(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(DELAY_9)
    model = DiaForConditionalGeneration(config)
    pth = save_native(model, tmp_path / "pth")
    assert is_native_source(pth) and is_native_source(pth.parent)
    # A v0.1 config says native whatever the weights' layout; a 0626 one says nothing, the keys decide.
    v01 = write_checkpoint(tmp_path / "v01", hf_config_to_native(config), model.state_dict(), "model.safetensors")
    assert is_native_source(v01.parent) and is_native_source(v01)
    keys = write_checkpoint(tmp_path / "keys", hf_config_to_native(config, "0626"), tiny_native(9), "model.safetensors")
    assert is_native_source(keys.parent) and is_native_source(keys)
    assert_identical(read_native(keys.parent)[1], native_to_hf(tiny_native(9), config))
    model.save_pretrained(tmp_path / "hf")
    assert not is_native_source(tmp_path / "hf") and not is_native_source(tmp_path / "hf" / "model.safetensors")
    assert not is_native_source(tmp_path / "missing") and not is_native_source("nari-labs/Dia-1.6B")


def test_source_errors_name_the_file_and_the_problem(tmp_path):
    native, config_dict = tiny_native(9), hf_config_to_native(tiny_config(DELAY_9))

    def fails(source, pattern: str, **kwargs) -> None:
        with pytest.raises(NativeFormatError, match=pattern):
            read_native(source, **kwargs)

    two = write_checkpoint(tmp_path / "two", config_dict, native, "a.pth").parent
    torch.save(native, two / "b.pth")
    fails(two, re.escape(f"{two}: several weights files ['a.pth', 'b.pth']; pass weights_name"))
    assert_identical(read_native(two, weights_name="b.pth")[1], native_to_hf(native, tiny_config(DELAY_9)))
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(native, bare / "dia-v0_1.pth")
    fails(bare, re.escape(f"{bare}: no config.json beside dia-v0_1.pth"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config_dict))
    fails(tmp_path / "empty", "empty: no weights file")
    extra = write_checkpoint(tmp_path / "extra", config_dict, native | {"decoder.extra.weight": torch.zeros(3)})
    fails(extra.parent, re.escape(f"{extra}: native state dict") + r".*unmapped: \['decoder.extra.weight'\]")
    fails(write_checkpoint(tmp_path / "list", config_dict, [torch.zeros(1)]), "list/dia-v0_1.pth: not a state dict")
    fails(tmp_path / "nowhere" / "dia.pth", "no such file or folder")


@pytest.mark.parametrize(
    "files, chosen",
    [
        (["README.md", "config.json", "dia-v0_1.pth"], "dia-v0_1.pth"),
        (["config.json", "model.safetensors"], "model.safetensors"),
        (["a.pth", "b.pth", "config.json", "model.safetensors"], "model.safetensors"),
    ],
)
def test_hub_id_downloads_the_config_and_the_chosen_weights(tmp_path, monkeypatch, files, chosen):
    native = tiny_native(9)
    write_checkpoint(tmp_path, hf_config_to_native(tiny_config(DELAY_9)), native, chosen)
    downloads = []

    class Api:
        def list_repo_files(self, repo_id: str) -> list[str]:
            assert repo_id == "org/tiny-dia"
            return files

    def download(repo_id: str, filename: str) -> str:
        downloads.append(filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    config, state = read_native("org/tiny-dia")
    assert downloads == ["config.json", chosen]
    assert_identical(state, native_to_hf(native, config))

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # a named file needs no listing
    read_native("org/tiny-dia", weights_name=chosen)
    assert downloads[2:] == ["config.json", chosen]


def test_hub_repository_with_an_ambiguous_choice_is_refused(monkeypatch):
    files = ["a.pth", "b.pth", "config.json"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: files)
    with pytest.raises(NativeFormatError, match=r"org/tiny-dia: several .pth files \['a.pth', 'b.pth'\]"):
        read_native("org/tiny-dia")
