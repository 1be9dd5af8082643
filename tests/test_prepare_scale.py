"""`dia-tpu prepare` at scale: bad inputs, --strict, resuming, two processes, stereo, long clips, codes files,
Hugging Face datasets. Every file is made here, in tmp_path; the codec is the tiny random one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import RANDOM_CODEC, ROOT, prepare_config, two_process_launch

from dia_tpu.config import Config
from dia_tpu.data import coder as coder_module
from dia_tpu.data.audio import encode, to_codec_input
from dia_tpu.data.clips import Segment, split_at_pauses
from dia_tpu.data.prepare import prepare
from dia_tpu.data.shards import PrepareError, read_prepare_info
from dia_tpu.errors import UserError
from dia_tpu.model.codec import build_codec

RATE = 44100


@pytest.fixture
def cfg() -> Config:
    return prepare_config("prepare.shard_size=3")


@pytest.fixture(scope="module")
def codec():
    return build_codec(prepare_config().model)


def noise(seconds: float, rate: int = RATE, seed: int = 0, channels: int = 1) -> np.ndarray:
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return np.random.default_rng(seed).uniform(-0.3, 0.3, shape).astype(np.float32)


def good_clips(folder: Path, count: int) -> list[str]:
    """`count` clips of different lengths and their metadata lines."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        sf.write(folder / "audio" / f"good_{i}.wav", noise(0.2 + 0.05 * i, seed=i), RATE)
        lines.append(f"audio/good_{i}.wav|[S1] Clip number {i}.")
    return lines


def write_metadata(folder: Path, lines: list[str]) -> None:
    (folder / "metadata.csv").write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")


def rows(out: Path) -> list[dict]:
    table = datasets.load_from_disk(str(out))
    return [{**row, "codes": np.asarray(row["codes"], dtype=np.int16)} for row in table]


def assert_same_dataset(a: Path, b: Path) -> None:
    left, right = rows(a), rows(b)
    assert [r["source_id"] for r in left] == [r["source_id"] for r in right]
    for x, y in zip(left, right, strict=True):
        assert {k: v for k, v in x.items() if k != "codes"} == {k: v for k, v in y.items() if k != "codes"}
        np.testing.assert_array_equal(x["codes"], y["codes"])


BAD = {
    "corrupt.wav": "cannot decode audio",
    "truncated.wav": "truncated",
    "empty.wav": "no samples",
    "silent.wav": "silent",
    "nan.wav": "non-finite samples",
    "low_rate.wav": "sample rate 4000 Hz is below prepare.min_sample_rate=8000",
    "six_channels.wav": "6 channels",
}


def write_bad_audio(audio: Path) -> None:
    (audio / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(3000))
    sf.write(audio / "truncated.wav", noise(0.5, seed=3), RATE, subtype="PCM_16")
    data = (audio / "truncated.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    sf.write(audio / "silent.wav", np.zeros(RATE // 2, np.float32), RATE)
    wave = noise(0.3, seed=4)
    wave[100] = np.nan
    sf.write(audio / "nan.wav", wave, RATE, subtype="FLOAT")
    sf.write(audio / "low_rate.wav", noise(0.5, 4000, seed=5), 4000)
    sf.write(audio / "six_channels.wav", noise(0.3, seed=6, channels=6), RATE)


def test_every_bad_input_is_skipped_with_its_reason_and_a_fixed_rerun_encodes_only_what_changed(tmp_path, cfg):
    source = tmp_path / "src"
    lines = good_clips(source, 2)
    write_bad_audio(source / "audio")
    sf.write(tmp_path / "outside.wav", noise(0.3), RATE)
    lines += [f"audio/{name}|[S1] Bad {name}." for name in BAD]
    lines += [
        "audio/missing.wav|[S1] Gone.",
        "../outside.wav|[S1] Outside.",
        "audio/good_0.wav|[S2] The same file again.",
        b"audio/good_1.wav|[S1] Caf\xe9 in Latin-1.",
        "audio/good_1.wav|   ",
    ]
    write_metadata(source, lines)
    out = tmp_path / "out"
    manifest = prepare(cfg, source, out)

    assert [r["source_id"] for r in rows(out)] == ["audio/good_0.wav", "audio/good_1.wav"]
    report = [line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()[1:]]
    reasons = {source_id: reason for _, source_id, reason in report}
    for name, reason in BAD.items():
        assert reason in reasons[f"audio/{name}"], (name, reasons[f"audio/{name}"])
    assert reasons["audio/missing.wav"] == f"missing file: looked for {source / 'audio/missing.wav'}"
    assert "escapes" in reasons["../outside.wav"]
    assert any(r.startswith("duplicate of audio/good_0.wav") for r in reasons.values())
    assert "transcript is not UTF-8" in reasons.values()
    assert manifest["kept"] == 2 and manifest["skipped"] == len(BAD) + 5 and manifest["encoded"] == 2

    # Fix two inputs and run again: only those two are encoded, the rest comes from the earlier dataset.
    sf.write(source / "audio" / "silent.wav", noise(0.3, seed=7), RATE)
    sf.write(source / "audio" / "missing.wav", noise(0.25, seed=8), RATE)
    manifest = prepare(cfg, source, out)
    assert manifest["kept"] == 4 and manifest["encoded"] == 2
    fresh = tmp_path / "fresh"
    prepare(cfg, source, fresh)
    assert_same_dataset(out, fresh)


def test_strict_stops_at_the_first_bad_input_and_names_it(tmp_path, cfg):
    source = tmp_path / "src"
    lines = good_clips(source, 4)
    write_bad_audio(source / "audio")
    write_metadata(source, [*lines[:2], "audio/silent.wav|[S1] Quiet.", *lines[2:]])
    with pytest.raises(PrepareError, match=r"audio/silent.wav: silent .*prepare.strict"):
        prepare(cfg, source, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "prepare",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "cli"),
            "--strict",
            *RANDOM_CODEC,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "audio/silent.wav: silent" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_interrupted_run_resumes_from_its_finished_shards(tmp_path, cfg, monkeypatch):
    source = tmp_path / "src"
    write_metadata(source, good_clips(source, 8))  # shards of 3: [0-2] [3-5] [6-7]
    straight = tmp_path / "straight"
    prepare(cfg, source, straight)

    calls = []

    def dies_in_the_second_shard(codec, waves, *args):
        calls.append(len(waves))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return encode(codec, waves, *args)

    monkeypatch.setattr(coder_module, "encode", dies_in_the_second_shard)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, source, out)
    assert not out.exists()
    work = sorted(p.name for p in (tmp_path / "out.work").iterdir())
    assert work == [".dia_tpu.json", "shard_00000", "shard_00000.json"]
    monkeypatch.setattr(coder_module, "encode", encode)
    manifest = prepare(cfg, source, out)
    assert manifest["encoded"] == 5  # shard 0 was kept; shards 1 and 2 were encoded
    assert_same_dataset(out, straight)
    assert not (tmp_path / "out.work").exists()


def test_two_processes_make_the_same_dataset_as_one(tmp_path, cfg):
    source = tmp_path / "src"
    write_metadata(source, good_clips(source, 7) + ["audio/missing.wav|[S1] Gone."])
    one = tmp_path / "one"
    prepare(cfg, source, one)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            *two_process_launch(29543),
            "-m",
            "dia_tpu.cli",
            "prepare",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "two"),
            "prepare.shard_size=3",
            *RANDOM_CODEC,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_dataset(one, tmp_path / "two")
    manifest = read_prepare_info(tmp_path / "two")
    assert manifest["processes"] == 2 and manifest["skipped"] == 1 and manifest["encoded"] == 7
    assert (tmp_path / "two" / "skipped.tsv").read_text() == (one / "skipped.tsv").read_text()


def test_stereo_encodes_left_and_right_separately(tmp_path, cfg, codec):
    source = tmp_path / "src"
    (source / "audio").mkdir(parents=True)
    stereo, mono = noise(0.4, seed=1, channels=2), noise(0.3, seed=2)
    sf.write(source / "audio" / "stereo.wav", stereo, RATE)
    sf.write(source / "audio" / "mono.wav", mono, RATE)
    write_metadata(source, ["audio/stereo.wav|[S1] Wide.", "audio/mono.wav|[S1] Narrow."])
    cfg.prepare.stereo = True
    manifest = prepare(cfg, source, tmp_path / "out")
    assert manifest["num_codebooks"] == 18 and manifest["stereo"]
    wide, narrow = rows(tmp_path / "out")
    left, right = to_codec_input(sf.read(source / "audio" / "stereo.wav", dtype="float32")[0], RATE, RATE, True)
    np.testing.assert_array_equal(wide["codes"][:, :9], encode(codec, [left])[0])
    np.testing.assert_array_equal(wide["codes"][:, 9:], encode(codec, [right])[0])
    np.testing.assert_array_equal(narrow["codes"][:, :9], narrow["codes"][:, 9:])  # mono is duplicated


def test_split_at_pauses_cuts_between_segments_only():
    segments = [Segment(0.0, 2.0, "[S1] One."), Segment(2.5, 5.0, "Two."), Segment(6.0, 9.0, "[S2] Three.")]
    assert split_at_pauses(segments, 9.5, 10.0) == [(0.0, 9.5, "[S1] One. Two. [S2] Three.")]
    assert split_at_pauses(segments, 9.5, 6.0) == [(0.0, 5.5, "[S1] One. Two."), (5.5, 9.5, "[S2] Three.")]
    assert split_at_pauses(segments, 9.5, 2.5) is None  # "Three." alone is 3 s long
    assert split_at_pauses(None, 9.5, 6.0) is None


def test_moshi_word_alignments_are_segments_whose_speakers_become_tags():
    from dia_tpu.data.clips import parse_segments

    moshi = {"alignments": [["Hi", [0.1, 0.4], "SPEAKER_MAIN"], ["there", [0.5, 0.9], "SPEAKER_MAIN"]]}
    moshi["alignments"] += [["Hello", [2.0, 2.6], "SPEAKER_1"], ["again", [2.7, 3.0], "SPEAKER_MAIN"]]
    words = parse_segments(moshi)
    assert [(w.text, w.start, w.end, w.speaker) for w in words][:1] == [("Hi", 0.1, 0.4, "SPEAKER_MAIN")]
    assert split_at_pauses(words, 3.2, 10.0) == [(0.0, 3.2, "[S1] Hi there [S2] Hello [S1] again")]
    assert split_at_pauses(words, 3.2, 2.0) == [(0.0, 1.45, "[S1] Hi there"), (1.45, 3.2, "[S2] Hello [S1] again")]
    with pytest.raises(UserError, match="alignments item 0 is not"):
        parse_segments({"alignments": [["Hi", 0.1]]})


def test_long_clips_split_at_timed_pauses_or_are_skipped(tmp_path, cfg):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("timed", "untimed"):
        sf.write(source / f"{name}.wav", noise(3.0, seed=len(name)), RATE)
        (source / f"{name}.txt").write_text("[S1] One. Two. [S2] Three.")
    timing = [
        {"start": 0.1, "end": 0.9, "text": "[S1] One."},
        {"start": 1.1, "end": 1.6, "text": "Two."},
        {"start": 2.0, "end": 2.8, "text": "[S2] Three."},
    ]
    (source / "timed.json").write_text(json.dumps(timing))
    # moshi-finetune's word timings beside a clip split it as well, their speakers tagged.
    sf.write(source / "words.wav", noise(3.0, seed=7), RATE)
    (source / "words.txt").write_text("[S1] One two. [S2] Three.")
    said = [["One", [0.1, 0.5], "A"], ["two", [0.6, 0.9], "A"], ["Three", [2.0, 2.8], "B"]]
    (source / "words.json").write_text(json.dumps({"alignments": said}))
    cfg.prepare.max_seconds = 1.8
    manifest = prepare(cfg, source, tmp_path / "out")
    kept = rows(tmp_path / "out")
    assert [(r["source_id"], r["text"]) for r in kept] == [
        ("timed.wav#0", "[S1] One. Two."),
        ("timed.wav#1", "[S2] Three."),
        ("words.wav#0", "[S1] One two"),
        ("words.wav#1", "[S2] Three"),
    ]
    assert kept[0]["duration"] == pytest.approx(1.8, abs=1e-3) and kept[1]["duration"] == pytest.approx(1.2, abs=1e-3)
    assert manifest["split_pieces"] == 4
    reason = (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1].split("\t")[2]
    assert "longer than prepare.max_seconds=1.8" in reason and "no word or segment timing" in reason


def test_codes_files_are_imported_without_the_codec(tmp_path, cfg, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    np.save(source / "a.npy", rng.integers(0, 1024, (9, 40)).astype(np.int64))  # [C, T]
    np.save(source / "b.npy", rng.integers(0, 1024, (30, 9)).astype(np.int16))  # [T, C]
    np.save(source / "bad.npy", rng.integers(0, 2000, (30, 9)).astype(np.int16))
    write_metadata(source, ["a.npy|[S1] First.", "b.npy|[S2] Second.", "bad.npy|[S1] Out of range."])

    def no_codec(*args, **kwargs):
        raise AssertionError("the codec was loaded")

    monkeypatch.setattr(coder_module, "build_codec", no_codec)
    manifest = prepare(cfg, source, tmp_path / "out")
    a, b = rows(tmp_path / "out")
    assert a["codes"].shape == (40, 9) and b["codes"].shape == (30, 9) and a["frames"] == 40
    np.testing.assert_array_equal(a["codes"], np.load(source / "a.npy").T)
    assert manifest["skipped"] == 1 and "bad.npy" in (tmp_path / "out" / "skipped.tsv").read_text()


def test_a_hugging_face_dataset_with_audio_bytes(tmp_path, cfg):
    buffers = []
    for i in range(3):
        path = tmp_path / f"clip{i}.flac"
        sf.write(path, noise(0.3 + 0.1 * i, 22050, seed=i), 22050)
        buffers.append({"bytes": path.read_bytes(), "path": None})
    buffers.append(None)
    table = datasets.Dataset.from_dict(
        {
            "audio": buffers,
            "sentence": [f"[S1] Row {i}." for i in range(4)],
            "speaker": ["a", "b", "a", "b"],
            "language": ["en", "en", "de", "en"],
        },
    ).cast_column("audio", datasets.Audio(decode=False))
    table.save_to_disk(str(tmp_path / "hf"))
    cfg.prepare.text_column = "sentence"
    manifest = prepare(cfg, tmp_path / "hf", tmp_path / "out")
    kept = rows(tmp_path / "out")
    assert manifest["kind"] == "hf" and manifest["skipped_by_reason"] == {"no audio in this row": 1}
    assert [(r["text"], r["speaker"], r["language"]) for r in kept] == [
        ("[S1] Row 0.", "a", "en"),
        ("[S1] Row 1.", "b", "en"),
        ("[S1] Row 2.", "a", "de"),
    ]
    assert kept[2]["duration"] == pytest.approx(0.5, abs=0.02)


def test_long_transcripts_are_reported_not_cut(tmp_path, cfg, capsys):
    source = tmp_path / "src"
    lines = good_clips(source, 2)
    long_text = "[S1] " + "word " * 40
    write_metadata(source, [lines[0], lines[1].split("|")[0] + "|" + long_text])
    cfg.data.max_text_tokens = 64
    manifest = prepare(cfg, source, tmp_path / "out")
    assert manifest["long_text"]["count"] == 1 and manifest["long_text"]["limit"] == 64
    assert rows(tmp_path / "out")[1]["text"] == long_text.strip()
    assert "1 transcripts are longer than data.max_text_tokens=64" in capsys.readouterr().out


def test_codec_mixed_precision_is_an_option(tmp_path, cfg):
    source = tmp_path / "src"
    write_metadata(source, good_clips(source, 2))
    prepare(cfg, source, tmp_path / "fp32")
    prepare(cfg, source, tmp_path / "fp32-again")
    cfg.prepare.mixed_precision = "bf16"
    manifest = prepare(cfg, source, tmp_path / "bf16")
    # bf16 codes are valid codes of the same length; they differ from fp32 codes (documented), which shows the
    # codec really ran under bf16 autocast: fp32 twice gives the same codes, so the difference is the precision's.
    assert manifest["config"]["prepare"]["mixed_precision"] == "bf16"
    differing = 0
    for full, again, half in zip(
        rows(tmp_path / "fp32"), rows(tmp_path / "fp32-again"), rows(tmp_path / "bf16"), strict=True
    ):
        assert half["codes"].shape == full["codes"].shape and 0 <= half["codes"].min() <= half["codes"].max() < 1024
        assert np.array_equal(again["codes"], full["codes"])
        differing += int((half["codes"] != full["codes"]).sum())
    assert differing > 0


def test_a_killed_run_resumes_where_it_stopped(tmp_path, cfg):
    source = tmp_path / "src"
    (source / "audio").mkdir(parents=True)
    lines = []
    for i in range(40):
        sf.write(source / "audio" / f"c{i:02d}.wav", noise(1.0, seed=i), RATE)
        lines.append(f"audio/c{i:02d}.wav|[S1] Clip {i}.")
    write_metadata(source, lines)
    cmd = [
        sys.executable,
        "-m",
        "dia_tpu",
        "prepare",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out"),
        "prepare.shard_size=1",
        *RANDOM_CODEC,
    ]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "out.work" / "shard_00002.json").exists():
        assert run.poll() is None and time.monotonic() < deadline, "prepare ended before it could be killed"
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    done = len(list((tmp_path / "out.work").glob("shard_*.json")))
    assert not (tmp_path / "out").exists() and 3 <= done < 40

    subprocess.run(cmd, capture_output=True, timeout=300, check=True)
    assert read_prepare_info(tmp_path / "out")["encoded"] == 40 - done  # finished shards were not redone
    cfg.prepare.shard_size = 1
    prepare(cfg, source, tmp_path / "straight")
    assert_same_dataset(tmp_path / "out", tmp_path / "straight")
