"""`dia-tpu prepare` on real files written in tmp_path, with a tiny random codec on CPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import prepare_config

from dia_tpu.config import Config
from dia_tpu.data import coder as coder_module
from dia_tpu.data import prepare as prepare_module
from dia_tpu.data.audio import encode, load_audio
from dia_tpu.data.prepare import prepare
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.model.codec import build_codec

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
RATE = 44100


@pytest.fixture(scope="module")
def cfg() -> Config:
    return prepare_config("prepare.batch_size=4")


@pytest.fixture(scope="module")
def codec(cfg):
    return build_codec(cfg.model)


def sine(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_source(folder: Path, lines: list[str]) -> Path:
    """Audio files of three formats and rates, a corrupt file, and metadata.csv with the given lines."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    left, right = sine(0.5, 22050, 220.0), sine(0.5, 22050, 330.0)
    sf.write(audio / "stereo_22k.wav", np.stack([left, right], axis=1), 22050)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, int(0.4 * 48000)).astype(np.float32)
    sf.write(audio / "noise_48k.flac", noise, 48000)
    sf.write(audio / "tone_44k.ogg", sine(0.3, RATE, 440.0), RATE)
    sf.write(audio / "spare.wav", sine(0.2, RATE, 500.0), RATE)
    (audio / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(4000))
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


GOOD = [
    "audio/stereo_22k.wav|[S1] A stereo clip.|S1",
    "audio/noise_48k.flac|  [S2] Some noise.  ",
    "audio/tone_44k.ogg|[S1] A tone.|S1",
]


def direct_codes(codec, path: Path) -> np.ndarray:
    return encode(codec, [load_audio(path, RATE)])[0]


def test_prepare_keeps_good_rows_and_reports_the_rest(tmp_path, cfg, codec):
    lines = [
        "file|text|speaker",
        GOOD[0],
        "audio/missing.wav|[S1] Gone.|S1",
        GOOD[1],
        "audio/corrupt.wav|[S2] Broken.|S2",
        "audio/spare.wav|   |S1",
        "a|b|c|d|e",
        "audio/stereo_22k.wav|[S1] Again.|S1",
        GOOD[2],
    ]
    source = write_source(tmp_path / "src", lines)
    out = tmp_path / "out"

    info = prepare(cfg, source, out)

    ds = datasets.load_from_disk(str(out))
    assert ds["text"] == ["[S1] A stereo clip.", "[S2] Some noise.", "[S1] A tone."]
    assert ds["source_id"] == ["audio/stereo_22k.wav", "audio/noise_48k.flac", "audio/tone_44k.ogg"]
    assert ds["speaker"] == ["S1", "", "S1"]
    assert ds.features["codes"].dtype == "int16" and ds.features["frames"].dtype == "int32"
    rows = ds.with_format("numpy", dtype=np.int16)
    for i, name in enumerate(["stereo_22k.wav", "noise_48k.flac", "tone_44k.ogg"]):
        codes = rows[i]["codes"]
        samples = len(load_audio(source / "audio" / name, RATE))
        assert codes.shape == (ds[i]["frames"], 9)
        assert abs(len(codes) - samples / 512) <= 1
        np.testing.assert_array_equal(codes, direct_codes(codec, source / "audio" / name))

    report = (out / "skipped.tsv").read_text().splitlines()
    assert report[0] == "index\tsource_id\treason"
    skipped = {source_id: reason for _, source_id, reason in (line.split("\t") for line in report[1:])}
    assert skipped == {
        "audio/missing.wav": f"missing file: looked for {source / 'audio/missing.wav'}",
        "audio/corrupt.wav": skipped["audio/corrupt.wav"],
        "audio/spare.wav": "empty transcript",
        "metadata.csv:7": "expected 2 to 3 fields, got 5",
        "audio/stereo_22k.wav (metadata.csv:8)": "duplicate of audio/stereo_22k.wav",
    }
    assert skipped["audio/corrupt.wav"].startswith("cannot decode audio: ")

    saved = json.loads((out / "manifest.json").read_text())
    assert saved == info == read_prepare_info(out)
    assert (saved["kept"], saved["skipped"], saved["num_codebooks"], saved["sample_rate"]) == (3, 5, 9, RATE)
    assert saved["frame_rate"] == RATE / 512
    assert saved["audio_seconds"] == pytest.approx(0.5 + 0.4 + 0.3, abs=1e-3)
    assert saved["audio_hours"] == pytest.approx(1.2 / 3600, abs=1e-4)
    assert saved["frames"] == sum(ds["frames"])
    assert saved["codec"]["codec"] is None and saved["source"] == str(source) and saved["kind"] == "metadata"
    assert saved["skipped_by_reason"] == {
        "missing file": 1,
        "cannot decode audio": 1,
        "empty transcript": 1,
        "expected 2 to 3 fields, got 5": 1,
        "duplicate of audio/stereo_22k.wav": 1,
    }
    assert saved["encoded"] == 3 and saved["config"]["prepare"]["shard_size"] == cfg.prepare.shard_size
    assert set(saved["seconds"]) == {"decode", "resample", "encode"}


def test_resampled_and_downmixed_codes_match_direct_encoding(tmp_path, cfg, codec):
    source = write_source(tmp_path / "src", [GOOD[0]])
    prepare(cfg, source, tmp_path / "out")

    path = source / "audio" / "stereo_22k.wav"
    wave = load_audio(path, RATE)
    assert len(wave) == 2 * 11025  # resampled from 22.05 kHz, one channel
    codes = np.asarray(datasets.load_from_disk(str(tmp_path / "out"))[0]["codes"], dtype=np.int16)
    np.testing.assert_array_equal(codes, encode(codec, [wave])[0])


@pytest.mark.parametrize(("pending_seconds", "batches"), [(600.0, [4, 1, 1]), (0.0, [1] * 6)])
def test_equal_lengths_are_batched_without_changing_codes(tmp_path, cfg, codec, monkeypatch, pending_seconds, batches):
    sizes = []

    def spy(codec, waves, *args):
        sizes.append(len(waves))
        return encode(codec, waves, *args)

    monkeypatch.setattr(coder_module, "encode", spy)
    # With no room to wait for equal-length partners every clip is encoded as soon as it is decoded.
    monkeypatch.setattr(prepare_module, "PENDING_SECONDS", pending_seconds)
    audio = tmp_path / "src" / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(2)
    lines = []
    for i in range(6):  # five clips of one length (a batch of 4 and a batch of 1) and one of another
        samples = 4000 if i < 5 else 5000
        sf.write(audio / f"c{i}.wav", rng.uniform(-0.3, 0.3, samples).astype(np.float32), RATE)
        lines.append(f"audio/c{i}.wav|clip {i}")
    (tmp_path / "src" / "metadata.csv").write_text("\n".join(lines))
    prepare(cfg, tmp_path / "src", tmp_path / "out")

    assert sizes == batches
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds["text"] == [f"clip {i}" for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(np.asarray(ds[i]["codes"]), direct_codes(codec, audio / f"c{i}.wav"))


def test_rerun_replaces_and_failed_run_keeps_the_earlier_dataset(tmp_path, cfg):
    source = write_source(tmp_path / "src", GOOD)
    out = tmp_path / "out"
    prepare(cfg, source, out)
    assert datasets.load_from_disk(str(out)).num_rows == 3

    (source / "metadata.csv").write_text(GOOD[2] + "\n")
    prepare(cfg, source, out)
    assert datasets.load_from_disk(str(out))["source_id"] == ["audio/tone_44k.ogg"]

    (source / "metadata.csv").write_text("audio/missing.wav|x\naudio/corrupt.wav|y\n")
    with pytest.raises(ValueError, match=r"no usable items.*missing file.*cannot decode audio"):
        prepare(cfg, source, out)
    assert datasets.load_from_disk(str(out))["source_id"] == ["audio/tone_44k.ogg"]
    assert read_prepare_info(out)["kept"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.work", "src"]


def test_refuses_to_replace_a_folder_that_is_not_a_prepared_dataset(tmp_path, cfg):
    source = write_source(tmp_path / "src", GOOD)
    with pytest.raises(FileExistsError, match=re.escape(str(source))):
        prepare(cfg, source, source)
    assert (source / "metadata.csv").is_file()


def test_missing_source_or_metadata(tmp_path, cfg):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        prepare(cfg, missing, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        prepare(cfg, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="run `dia-tpu prepare` first"):
        read_prepare_info(tmp_path / "empty")


def test_bundled_sample(tmp_path, cfg):
    info = prepare(cfg, SAMPLE, tmp_path / "sample")
    assert (info["kept"], info["skipped"]) == (32, 0)
    assert info["audio_seconds"] == pytest.approx(74.9, abs=0.1)
    # Hours keep four decimals (0.36 s), too coarse for the short clips of the test above; here the shortest clip
    # is 4e-4 h (1.5 s), so hours or seconds that missed a clip would fail.
    assert info["audio_hours"] == pytest.approx(74.9 / 3600, abs=1e-4)
    ds = datasets.load_from_disk(str(tmp_path / "sample"))
    assert min(ds["duration"]) / 3600 > 3e-4
    assert ds.num_rows == 32 and set(ds["speaker"]) == {"S1", "S2"}
    assert (tmp_path / "sample" / "skipped.tsv").read_text() == "index\tsource_id\treason\n"


def test_doubtful_items_are_flagged_and_a_long_file_skipped_from_its_header(tmp_path, cfg, monkeypatch):
    source = write_source(
        tmp_path / "src",
        [
            *GOOD[:2],
            "audio/loud.wav|[S1] Far too loud.",
            "audio/spare.wav|[S2] A NUL\0 byte.",
            "audio/long.wav|[S1] An hour of silence.",
        ],
    )
    sf.write(source / "audio/loud.wav", 12.5 * sine(0.4, RATE, 300.0), RATE, subtype="FLOAT")  # peak 5.0
    sf.write(source / "audio/long.wav", np.zeros(30 * 8000, dtype=np.float32), 8000)
    decoded = []
    real_read = prepare_module.read_audio
    monkeypatch.setattr(
        prepare_module, "read_audio", lambda ref, rate: decoded.append(ref.path.name) or real_read(ref, rate)
    )
    manifest = prepare(prepare_config("prepare.max_seconds=20"), source, tmp_path / "out")
    assert manifest["kept"] == 4 and manifest["flagged"] == 2
    assert manifest["flagged_by_reason"] == {"clipped": 1, "transcript holds a NUL byte": 1}
    flagged = [line.split("\t") for line in (tmp_path / "out" / "flagged.tsv").read_text().splitlines()[1:]]
    assert [(row[1], row[2][:17]) for row in flagged] == [
        ("audio/loud.wav", "clipped: peak 5.0"),
        ("audio/spare.wav", "transcript holds "),
    ]
    skipped = (tmp_path / "out" / "skipped.tsv").read_text()
    assert "audio/long.wav\t30.0 s is longer than prepare.max_seconds=20" in skipped
    assert "long.wav" not in decoded and "loud.wav" in decoded  # the long file was never decoded


def test_a_data_folder_with_its_audio_beside_the_rows(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    sf.write(folder / "a.flac", sine(0.5, RATE, 300.0), RATE)
    (folder / "rows.jsonl").write_text(json.dumps({"audio": "a.flac", "text": "[S1] A tone."}) + "\n")
    assert prepare(prepare_config(), folder, tmp_path / "out")["kept"] == 1
    (folder / "broken.jsonl").write_text('{"audio": "a.flac", "text": \n')
    with pytest.raises(ValueError, match=r"/hf: its json files cannot be read as rows \(JSON parse error"):
        prepare(prepare_config(), folder, tmp_path / "out")
