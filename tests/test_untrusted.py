"""Folders from elsewhere are data: a sharded (torch distributed checkpoint) folder whose metadata, storage table or
pickled entries would run code or read outside it is refused in one line, before anything runs, by export,
generation and Accelerate's FSDP resume alike."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import RANDOM_CODEC, ROOT, tiny_dia_config
from transformers import DiaForConditionalGeneration

from dia_tpu.artifacts.sharded import METADATA_FILE, checked_loading
from dia_tpu.artifacts.weights import SHARDED_WEIGHTS, read_weights
from dia_tpu.config import load
from dia_tpu.export import export_checkpoint


class Planted:
    """A pickled object that touches a file when it is unpickled: the payload of every test here."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (self.mark,))


def sharded_folder(root: Path, extra: dict | None = None) -> Path:
    """A checkpoint folder as FSDP2 saves one (config.json, config.yaml, the model in torch's distributed
    checkpoint format under "model."), with `extra` entries saved beside the weights."""
    torch.manual_seed(0)
    model = DiaForConditionalGeneration(tiny_dia_config())
    root.mkdir(parents=True)
    model.config.save_pretrained(root)
    load(ROOT / "configs/demo.yaml", RANDOM_CODEC).save(root / "config.yaml")
    state = {f"model.{k}": v for k, v in model.state_dict().items()} | (extra or {})
    dcp.save(state, checkpoint_id=root / SHARDED_WEIGHTS, no_dist=True)
    return root


def test_a_clean_sharded_folder_exports(tmp_path):
    folder = sharded_folder(tmp_path / "ckpt")
    out = export_checkpoint(folder, tmp_path / "export")
    exported = DiaForConditionalGeneration.from_pretrained(out).state_dict()
    assert set(read_weights(folder / SHARDED_WEIGHTS)) == set(exported)


def test_a_pickled_entry_in_a_model_folder_is_refused_and_never_run(tmp_path):
    mark = tmp_path / "ran"
    folder = sharded_folder(tmp_path / "ckpt", {"model.extra": Planted(mark)})
    with pytest.raises(ValueError, match=r"entry 'model\.extra' is a pickled object, not a tensor"):
        export_checkpoint(folder, tmp_path / "export")
    assert not mark.exists() and not (tmp_path / "export").exists()
    # The planted entry really is live: torch's own reader runs it.
    state = {"model.extra": None}
    dcp.load(state, storage_reader=dcp.FileSystemReader(folder / SHARDED_WEIGHTS), no_dist=True)
    assert mark.exists()


def _rewrite_metadata(folder: Path, change) -> None:
    path = folder / METADATA_FILE
    metadata = pickle.loads(path.read_bytes())
    change(metadata)
    path.write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("../outside.distcp", r"'\.\./outside\.distcp' is not a storage file of the folder"),
        ("/etc/passwd", r"'/etc/passwd' is not a storage file of the folder"),
        ("__9_0.distcp", r"__9_0\.distcp is missing or a link"),
    ],
)
def test_a_storage_path_out_of_the_folder_is_refused(tmp_path, where, message):
    folder = sharded_folder(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "outside.distcp").write_bytes(b"x" * 64)

    def move_one(metadata):
        info = next(iter(metadata.storage_data.values()))
        info.relative_path = where

    _rewrite_metadata(folder / SHARDED_WEIGHTS, move_one)
    with pytest.raises(ValueError, match=message):
        read_weights(folder / SHARDED_WEIGHTS)


def test_a_range_past_the_file_or_a_chunk_past_its_tensor_is_refused(tmp_path):
    folder = sharded_folder(tmp_path / "ckpt")

    def lengthen(metadata):
        next(iter(metadata.storage_data.values())).length = 10**9

    _rewrite_metadata(folder / SHARDED_WEIGHTS, lengthen)
    with pytest.raises(ValueError, match=r"bytes 0-1000000\d+ lie past the end of __0_0\.distcp"):
        read_weights(folder / SHARDED_WEIGHTS)


def test_the_checked_metadata_is_the_one_loaded(tmp_path, monkeypatch):
    """torch's reader would read `.metadata` again after the check; the checked reader hands over what it checked."""
    folder = sharded_folder(tmp_path / "ckpt")

    def second_read(*args, **kwargs):
        raise AssertionError(".metadata read a second time, unchecked")

    monkeypatch.setattr(dcp.FileSystemReader, "read_metadata", second_read)
    assert read_weights(folder / SHARDED_WEIGHTS)
    with pytest.raises(BaseException, match="a second time"):  # torch's own reader (in its CheckpointException)
        dcp.load(
            {"model.encoder.norm.weight": torch.empty(32)},
            storage_reader=dcp.FileSystemReader(folder / SHARDED_WEIGHTS),
            no_dist=True,
        )


def _load_as_accelerate_does(folder: Path, state: dict) -> None:
    """`load_fsdp_optimizer`'s own call in Accelerate: torch's reader and default planner, looked up at call time."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    dcp.load(state_dict=state, storage_reader=dcp.FileSystemReader(folder), planner=DefaultLoadPlanner())


def test_accelerates_fsdp_resume_reads_optimizer_settings_as_plain_data_only(tmp_path):
    groups = [{"lr": 1e-3, "betas": (0.9, 0.99), "params": ["w"], "fused": None}]
    dcp.save(
        {"optimizer": {"state": {"w": {"exp_avg": torch.arange(4.0)}}, "param_groups": groups}},
        checkpoint_id=tmp_path / "optimizer_0",
        no_dist=True,
    )
    loaded = {
        "optimizer": {
            "state": {"w": {"exp_avg": torch.zeros(4)}},
            "param_groups": [{"lr": 0.0, "betas": (0.0, 0.0), "params": ["w"], "fused": False}],
        }
    }
    with checked_loading(tmp_path):
        _load_as_accelerate_does(tmp_path / "optimizer_0", loaded)
    assert loaded["optimizer"]["param_groups"] == groups
    assert torch.equal(loaded["optimizer"]["state"]["w"]["exp_avg"], torch.arange(4.0))

    mark = tmp_path / "ran"
    dcp.save({"optimizer": {"param_groups": [{"lr": Planted(mark)}]}}, checkpoint_id=tmp_path / "planted", no_dist=True)
    with pytest.raises(ValueError, match=r"entry 'optimizer\.param_groups\.0\.lr' is not plain data, refused"):
        with checked_loading(tmp_path):
            _load_as_accelerate_does(tmp_path / "planted", {"optimizer": {"param_groups": [{"lr": 0.0}]}})
    assert not mark.exists()
    # Outside `checked_loading`, Accelerate's call runs the payload.
    _load_as_accelerate_does(tmp_path / "planted", {"optimizer": {"param_groups": [{"lr": 0.0}]}})
    assert mark.exists()


def test_generate_refuses_a_planted_sharded_checkpoint_in_one_line(tmp_path):
    mark = tmp_path / "ran"
    folder = sharded_folder(tmp_path / "ckpt", {"model.extra": Planted(mark)})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "generate",
            "--model",
            str(folder),
            "--text",
            "[S1] Hi.",
            "--out",
            str(tmp_path / "x.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"dia-tpu generate: error: {folder / SHARDED_WEIGHTS / METADATA_FILE}: refused, entry 'model.extra' is a "
        "pickled object, not a tensor (a model's weights are tensors only)"
    ]
    assert not mark.exists() and not (tmp_path / "x.wav").exists()


def test_a_pickle_in_an_exports_weights_is_refused_without_torchs_advice(tmp_path):
    from dia_tpu.model.load import load_model

    mark = tmp_path / "ran"
    folder = tmp_path / "export"
    model = DiaForConditionalGeneration(tiny_dia_config())
    model.config.save_pretrained(folder)
    torch.save({**model.state_dict(), "extra": Planted(mark)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as caught:
        load_model(folder)
    assert str(caught.value) == (
        f"{folder}: holds a pickle that is not only tensors and plain values (it names "
        "getattr): loading it could run code, so it is not loaded"
    )
    assert not mark.exists()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the same folder with weights alone loads
    assert load_model(folder).state_dict().keys() == model.state_dict().keys()


def test_generate_checks_where_it_writes_before_generating(tmp_path):
    from dia_tpu.generation.speak import write_speech
    from dia_tpu.generation.synthesize import GenerationSettings

    # The model is never opened: each refusal comes first.
    for out, message in [
        (tmp_path, r"is a folder: give a file name ending in \.wav"),
        (tmp_path / "speech", r"speech: no suffix names no sound format"),
        (tmp_path / "speech.txt", r"speech\.txt: \.txt names no sound format"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_speech(str(tmp_path / "no-model"), ["[S1] Hi."], [out], GenerationSettings())
    with pytest.raises(FileNotFoundError, match="model not found"):  # a good --out goes on to the model
        write_speech(str(tmp_path / "no-model"), ["[S1] Hi."], [tmp_path / "new" / "x.wav"], GenerationSettings())


def test_check_names_what_would_be_refused_before_anything_is_loaded(tmp_path):
    from dia_tpu.artifacts.audit import audit

    mark = tmp_path / "ran"
    sent = sharded_folder(tmp_path / "sent", {"model.extra": Planted(mark)})
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}, "x": Planted(mark)}, sent / "optimizer.bin")
    (sent / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps([1, 2]))
    (tmp_path / "elsewhere").mkdir()
    (sent / "best").symlink_to(tmp_path / "elsewhere")
    (sent / "samples" / "step_000001").mkdir(parents=True)
    (sent / "samples" / "step_000001" / "index.json").write_text('[{"name": "../../../../secretdir/voicemail"}]')
    config = json.loads((sent / "config.json").read_text())
    (sent / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    found = audit(sent)
    assert found.refused == [
        "best is a link to {}, outside the folder: training replaces it by renaming and neither follows nor removes "
        "links".format(tmp_path / "elsewhere"),
        "custom_checkpoint_0.pkl: a pickle dia_tpu never writes and never loads (it can run code)",
        "optimizer.bin: holds a pickle that is not only tensors and plain values (it names getattr): loading it could "
        "run code",
        f"{SHARDED_WEIGHTS}/.metadata: refused, entry 'model.extra' is a pickled object, not a tensor (a model's "
        "weights are tensors only)",
        "samples/step_000001/index.json: a sample's name '../../../../secretdir/voicemail.wav' leads out of "
        f"{sent / 'samples' / 'step_000001'}; the report does not show it",
    ]
    assert found.notes == ["config.json names code of its own (auto_map): dia_tpu never runs it (no trust_remote_code)"]
    assert not mark.exists()

    done = subprocess.run(
        [sys.executable, "-m", "dia_tpu", "check", str(sent)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and done.stdout.splitlines() == found.lines()
    assert done.stderr.splitlines() == [f"dia-tpu check: error: 5 thing(s) in {sent} would be refused (listed above)"]
    clean = audit(sharded_folder(tmp_path / "clean"))
    assert clean.refused == [] and clean.notes == []
