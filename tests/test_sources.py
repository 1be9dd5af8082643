"""dia_tpu.sources: every source kind read from real files made in tmp_path; problems become Clips, not errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import save_file

from dia_tpu.config import PrepareConfig, load
from dia_tpu.data.clips import AudioRef, Clip, Segment, normalize_text
from dia_tpu.data.codes_files import load_codes_file
from dia_tpu.data.sources import detect_kind, read_clips

RATE = 16000


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """load_dataset converts data files into a cache; keep it inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if `datasets` decodes any audio (it would need FFmpeg/torchcodec)."""

    def refuse(*args, **kwargs):
        raise AssertionError("datasets decoded audio")

    monkeypatch.setattr(datasets.Audio, "decode_example", refuse)


def wav(path: Path, seconds: float = 0.05) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.3 * np.sin(np.arange(int(RATE * seconds)) / 5), RATE)
    return path


def wav_bytes(seconds: float = 0.05) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(np.arange(int(RATE * seconds)) / 7), RATE, format="WAV")
    return buffer.getvalue()


def clips(path, **settings) -> list[Clip]:
    return list(read_clips(str(path), PrepareConfig(**settings)))


def check_numbering(result: list[Clip]) -> None:
    assert [c.index for c in result] == list(range(len(result)))
    assert len({c.source_id for c in result}) == len(result)


# ---- metadata.csv


def test_metadata_with_header_reads_file_text_speaker(tmp_path):
    wav(tmp_path / "audio/a.wav")
    wav(tmp_path / "audio/b.flac")
    (tmp_path / "metadata.csv").write_text("file|text|speaker\naudio/a.wav|[S1] Hello.|S1\naudio/b.flac|[S2] Hi.\n")
    cfg = load(None, ["model.pretrained=org/dia", "prepare.kind=auto", "prepare.speaker_column=speaker"]).prepare
    assert detect_kind(str(tmp_path), cfg) == "metadata"
    result = list(read_clips(str(tmp_path), cfg))
    assert [(c.source_id, c.text, c.speaker, c.problem) for c in result] == [
        ("audio/a.wav", "[S1] Hello.", "S1", None),
        ("audio/b.flac", "[S2] Hi.", "", None),
    ]
    assert result[0].audio.path == tmp_path / "audio/a.wav"
    assert result[0].audio.content() == (tmp_path / "audio/a.wav").read_bytes()
    check_numbering(result)
    # The metadata.csv itself names the same source.
    assert detect_kind(str(tmp_path / "metadata.csv"), cfg) == "metadata"
    assert [c.source_id for c in read_clips(str(tmp_path / "metadata.csv"), cfg)] == ["audio/a.wav", "audio/b.flac"]


def test_metadata_without_header_is_file_text_speaker(tmp_path):
    wav(tmp_path / "a.wav")
    wav(tmp_path / "b.wav")
    (tmp_path / "metadata.csv").write_text("a.wav|one|S1\r\n\r\nb.wav|two|S2\r\n")
    result = clips(tmp_path)
    assert [(c.source_id, c.text, c.speaker, c.problem) for c in result] == [
        ("a.wav", "one", "S1", None),
        ("b.wav", "two", "S2", None),
    ]


def test_metadata_ljspeech_layout(tmp_path):
    wav(tmp_path / "wavs/LJ001-0001.wav")
    wav(tmp_path / "wavs/LJ001-0002.flac")  # found by trying the audio extensions
    (tmp_path / "metadata.csv").write_text(
        "LJ001-0001|Printing, in the 2nd sense|Printing, in the second sense\n"
        "LJ001-0002|in 1450 only|in fourteen fifty only\n"
    )
    result = clips(tmp_path, text_column="normalized_text")
    assert [(c.source_id, c.text, c.problem) for c in result] == [
        ("wavs/LJ001-0001.wav", "Printing, in the second sense", None),
        ("wavs/LJ001-0002.flac", "in fourteen fifty only", None),
    ]
    assert [c.text for c in clips(tmp_path)] == ["Printing, in the 2nd sense", "in 1450 only"]


def test_metadata_custom_delimiter_and_columns(tmp_path):
    wav(tmp_path / "x.wav")
    wav(tmp_path / "y.wav")
    # A first line that repeats the configured columns is a header.
    (tmp_path / "metadata.csv").write_text("speaker,file,text,language\nanna,x.wav,hallo,de\nbo,y.wav,hej,sv\n")
    result = clips(tmp_path, delimiter=",", columns=["speaker", "file", "text", "language"])
    assert [(c.source_id, c.text, c.speaker, c.language, c.problem) for c in result] == [
        ("x.wav", "hallo", "anna", "de", None),
        ("y.wav", "hej", "bo", "sv", None),
    ]


def test_metadata_with_byte_order_mark(tmp_path):
    wav(tmp_path / "a.wav")
    (tmp_path / "metadata.csv").write_bytes(b"\xef\xbb\xbffile|text\na.wav|hello\n")
    assert [(c.source_id, c.text, c.problem) for c in clips(tmp_path)] == [("a.wav", "hello", None)]


def test_metadata_without_the_text_field_names_the_fields(tmp_path):
    (tmp_path / "metadata.csv").write_text("file|transcript\na.wav|hello\n")
    with pytest.raises(ValueError, match=r"metadata.csv: no field for the text .*'text'.*file\|transcript"):
        clips(tmp_path)


def test_metadata_codes_files_and_segment_timing(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((9, 4), np.int16))
    wav(tmp_path / "b.wav")
    (tmp_path / "b.json").write_text(json.dumps([{"start": 0, "end": 0.02, "text": "hi"}]))
    (tmp_path / "metadata.csv").write_text("a.npy|codes\nb.wav|hi\n")
    first, second = clips(tmp_path)
    assert first.codes_file == tmp_path / "a.npy" and first.audio is None
    assert second.segments == [Segment(0.0, 0.02, "hi")]


def test_ljspeech_layout_with_file_names_finds_wavs_and_keeps_the_third_field_as_text(tmp_path):
    """`clip01.wav|text|normalized text` with the audio under wavs/: the file is found there, the normalised
    text is never a speaker, and a file in neither place names both paths tried."""
    wav(tmp_path / "wavs/clip01.wav")
    wav(tmp_path / "wavs/clip02.wav")
    (tmp_path / "metadata.csv").write_text(
        "clip01.wav|Dr. Smith paid $5.|Doctor Smith paid five dollars.\n"
        "clip02.wav|It is 10 AM.|It is ten A M.\n"
        "clip03.wav|Lost.|Lost.\n"
    )
    first, second, third = clips(tmp_path)
    assert (first.audio.path, first.text, first.speaker) == (tmp_path / "wavs/clip01.wav", "Dr. Smith paid $5.", "")
    assert second.audio.path == tmp_path / "wavs/clip02.wav" and second.speaker == ""
    assert third.problem == f"missing file: looked for {tmp_path / 'clip03.wav'} and {tmp_path / 'wavs/clip03.wav'}"
    # Without a wavs/ folder, a third field that reads as the text again is not a speaker either; a label is.
    elsewhere = tmp_path / "flat"
    wav(elsewhere / "a.wav")
    wav(elsewhere / "b.wav")
    (elsewhere / "metadata.csv").write_text("a.wav|Hello there.|hello there\nb.wav|Bye.|S2\n")
    assert [c.speaker for c in clips(elsewhere)] == ["", ""]
    (elsewhere / "metadata.csv").write_text("a.wav|Hello there.|S1\nb.wav|Bye.|S2\n")
    assert [c.speaker for c in clips(elsewhere)] == ["S1", "S2"]


def test_metadata_problems_are_clips_and_other_lines_still_read(tmp_path):
    root = tmp_path / "data"
    wav(root / "a.wav")
    wav(root / "b.wav")
    wav(tmp_path / "outside.wav")
    lines = [
        b"file|text|speaker",
        b"a.wav|first|S1",
        b"gone.wav|missing",
        b"../outside.wav|escapes",
        b"b.wav|   ",
        b"./a.wav|again",
        b"b.wav",
        b"b.wav|x|S1|extra",
        b"b.wav|caf\xe9 latin-1",
        b"b.wav|last",
    ]
    root.joinpath("metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    result = clips(root)
    assert [(c.source_id, c.problem) for c in result] == [
        ("a.wav", None),
        ("gone.wav", f"missing file: looked for {root / 'gone.wav'}"),
        ("../outside.wav", "path escapes the dataset folder"),
        ("b.wav", "empty transcript"),
        ("a.wav (metadata.csv:6)", "duplicate of a.wav"),
        ("metadata.csv:7", "expected 2 to 3 fields, got 1"),
        ("metadata.csv:8", "expected 2 to 3 fields, got 4"),
        ("metadata.csv:9", "transcript is not UTF-8"),
        ("b.wav (metadata.csv:10)", "duplicate of b.wav"),
    ]
    check_numbering(result)


def test_metadata_kind_needs_a_metadata_csv(tmp_path):
    wav(tmp_path / "a.wav")
    with pytest.raises(FileNotFoundError, match="metadata.csv not found"):
        clips(tmp_path, kind="metadata")


# ---- sidecar folders


def test_sidecar_folder(tmp_path):
    for name in ("a.wav", "a/z.flac", "b/x.wav", "c.wav", "e.wav"):
        wav(tmp_path / name)
    np.save(tmp_path / "d.npy", np.zeros((4, 9), np.int16))
    (tmp_path / "a.txt").write_text("  first   one ")
    (tmp_path / "a.json").write_text(json.dumps({"segments": [{"start": 0.0, "end": 0.01, "text": "first"}]}))
    (tmp_path / "b/x.txt").write_text("nested")
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")
    (tmp_path / "d.txt").write_text("codes")
    (tmp_path / "e.txt").write_text("bad timing")
    (tmp_path / "e.json").write_text("[{")
    assert detect_kind(str(tmp_path), PrepareConfig()) == "sidecar"  # its .json files are timing, not data
    result = clips(tmp_path)
    assert [(c.source_id, c.text, c.problem) for c in result] == [
        ("a/z.flac", "", "no transcript (.txt) beside it"),
        ("a.wav", "first one", None),
        ("b/x.wav", "nested", None),
        ("c.wav", "", "transcript is not UTF-8: c.txt"),
        ("d.npy", "codes", None),
        ("e.wav", "bad timing", result[-1].problem),
    ]
    assert result[-1].problem.startswith("bad segment timing in e.json")
    assert result[1].segments == [Segment(0.0, 0.01, "first")]
    assert result[4].codes_file == tmp_path / "d.npy"
    check_numbering(result)


# ---- Hugging Face datasets


def test_hf_saved_audio_column_gives_bytes_without_decoding(tmp_path, no_decoding):
    data = [wav_bytes(0.05), wav_bytes(0.06)]
    rows = {
        "audio": [{"bytes": data[0], "path": None}, {"bytes": data[1], "path": "b.wav"}, None],
        "text": ["one", "two", "three"],
    }
    dataset = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert detect_kind(str(tmp_path / "saved"), PrepareConfig()) == "hf"
    result = clips(tmp_path / "saved")
    assert [(c.source_id, c.text, c.problem) for c in result] == [
        ("train/0", "one", None),
        ("train/1", "two", None),
        ("train/2", "three", "no audio in this row"),
    ]
    assert [c.audio.data for c in result[:2]] == data


def test_hf_saved_paths_arrays_and_optional_columns(tmp_path):
    folder = tmp_path / "saved"
    wav(folder / "wavs/a.wav")
    none = {"bytes": None, "path": None, "array": None, "sampling_rate": None}
    rows = {
        "audio": [
            {**none, "path": "wavs/a.wav"},
            {**none, "array": [0.1, -0.2, 0.3], "sampling_rate": 22050},
            {**none, "path": "../x.wav"},
        ],
        "sentence": ["a", "b", "c"],
        "speaker": [7, 8, 9],
        "segments": [[{"start": 0.0, "end": 0.5, "text": "a"}], [], []],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    result = clips(folder, text_column="sentence")
    assert [(c.text, c.speaker, c.problem) for c in result] == [
        ("a", "7", None),
        ("b", "8", None),
        ("c", "9", "path escapes the dataset folder"),
    ]
    assert result[0].audio.path == folder / "wavs/a.wav"
    assert result[0].segments == [Segment(0.0, 0.5, "a")]
    assert result[1].audio.rate == 22050
    np.testing.assert_allclose(result[1].audio.array, [0.1, -0.2, 0.3])
    assert result[1].audio.content() != AudioRef(array=np.array([0.1, -0.2, 0.3]), rate=44100).content()


def test_hf_channel_first_arrays_become_samples_by_channels(tmp_path):
    stereo = np.stack([np.linspace(0, 1, 50), np.linspace(1, 0, 50)]).astype(np.float32)
    rows = {"audio": [{"array": stereo.tolist(), "sampling_rate": RATE}], "text": ["stereo"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    [clip] = clips(tmp_path / "saved")
    np.testing.assert_allclose(clip.audio.array, stereo.T)


def test_hf_dataset_dict_split_selection(tmp_path):
    splits = {name: datasets.Dataset.from_dict({"audio": [wav_bytes()], "text": [name]}) for name in ("train", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    result = clips(tmp_path / "dd", split="test")
    assert [(c.source_id, c.text, c.audio.data is not None) for c in result] == [("test/0", "test", True)]
    with pytest.raises(ValueError, match=r"no split 'validation' \(prepare.split\); its splits are train, test"):
        clips(tmp_path / "dd", split="validation")


def test_hf_parquet_folder_with_split_files(tmp_path):
    wav(tmp_path / "wavs/a.wav")
    wav(tmp_path / "wavs/b.wav")
    (tmp_path / "data").mkdir()
    for split, name in (("train", "a"), ("test", "b")):
        rows = {"audio": [f"wavs/{name}.wav"], "text": [f"{split} text"]}
        datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / f"data/{split}-00000-of-00001.parquet"))
    assert detect_kind(str(tmp_path), PrepareConfig()) == "hf"
    [clip] = clips(tmp_path, split="test")
    assert (clip.source_id, clip.text, clip.audio.path) == ("test/0", "test text", tmp_path / "wavs/b.wav")


def test_hf_jsonl_with_path_column_and_ids(tmp_path):
    wav(tmp_path / "clips/a.wav")
    rows = [
        {"id": "utt-a", "path": "clips/a.wav", "sentence": "hello", "locale": "en"},
        {"id": "utt-b", "path": "clips/none.wav", "sentence": "gone", "locale": "en"},
        {"id": "utt-a", "path": "clips/a.wav", "sentence": "again", "locale": "en"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_kind(str(tmp_path / "rows.jsonl"), PrepareConfig()) == "hf"
    # A single data file is all "train", whatever split is asked for.
    result = clips(
        tmp_path / "rows.jsonl", audio_column="path", text_column="sentence", language_column="locale", split="test"
    )
    assert [(c.source_id, c.text, c.language, c.problem) for c in result] == [
        ("utt-a", "hello", "en", None),
        ("utt-b", "gone", "en", f"missing file: looked for {tmp_path / 'clips/none.wav'}"),
        ("utt-a (train/2)", "again", "en", "duplicate of utt-a"),
    ]
    assert result[0].audio.path == tmp_path / "clips/a.wav"
    check_numbering(result)


def test_hf_streaming_parquet(tmp_path, no_decoding):
    data = wav_bytes()
    rows = {"audio": [{"bytes": data, "path": "a.wav"}, None], "text": ["streamed", "nothing"]}
    dataset = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio())
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    result = clips(tmp_path / "train.parquet", streaming=True)
    assert [(c.source_id, c.text, c.problem) for c in result] == [
        ("train/0", "streamed", None),
        ("train/1", "nothing", "no audio in this row"),
    ]
    assert result[0].audio.data == data


def test_hf_missing_text_column_lists_the_columns(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"audio": "a.wav", "transcription": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"prepare.text_column='text'.*columns are audio, transcription"):
        clips(tmp_path / "rows.jsonl")


def test_hf_hub_id_is_loaded_with_config_split_and_streaming(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict({"audio": [{"bytes": wav_bytes(), "path": None}], "text": ["hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)  # so "org/name" is no local path
    settings = dict(hf_config="clean", split="validation", streaming=True)
    assert detect_kind("org/name", PrepareConfig(**settings)) == "hf"
    [clip] = clips("org/name", **settings)
    assert calls == [(("org/name", "clean"), {"split": "validation", "streaming": True})]
    assert (clip.source_id, clip.text, clip.problem) == ("validation/0", "hub", None)


# ---- detection


def test_detect_kind_refuses_what_it_cannot_read(tmp_path):
    cfg = PrepareConfig()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        detect_kind(str(tmp_path / "nowhere"), cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found no metadata.csv"):
        detect_kind(str(tmp_path / "empty"), cfg)
    wav(tmp_path / "both/a.wav")
    (tmp_path / "both/a.txt").write_text("hi")
    (tmp_path / "both/rows.csv").write_text("audio,text\n")
    with pytest.raises(ValueError, match="set prepare.kind"):
        detect_kind(str(tmp_path / "both"), cfg)
    assert detect_kind(str(tmp_path / "both"), PrepareConfig(kind="sidecar")) == "sidecar"
    with pytest.raises(ValueError, match="prepare.kind: 'folder'"):
        detect_kind(str(tmp_path), PrepareConfig(kind="folder"))


# ---- codes files


def _codes(frames: int = 5, channels: int = 9) -> np.ndarray:
    return np.arange(frames * channels, dtype=np.int64).reshape(frames, channels) % 1024


@pytest.mark.parametrize(
    "name, save",
    [
        ("ct.npy", lambda p, c: np.save(p, c.T.astype(np.int32))),
        ("tc.npy", lambda p, c: np.save(p, c.astype(np.uint16))),
        ("tensor.pt", lambda p, c: torch.save(torch.from_numpy(c.T.copy()), p)),
        ("dict.pt", lambda p, c: torch.save({"codes": torch.from_numpy(c), "rate": 44100}, p)),
        ("one.safetensors", lambda p, c: save_file({"anything": c.T.copy()}, str(p))),
        ("keyed.safetensors", lambda p, c: save_file({"codes": c.copy(), "other": c[:1].copy()}, str(p))),
    ],
)
def test_load_codes_file_formats_and_layouts(tmp_path, name, save):
    save(tmp_path / name, _codes())
    codes = load_codes_file(tmp_path / name, 9, "auto")
    assert codes.dtype == np.int16 and codes.shape == (5, 9)
    np.testing.assert_array_equal(codes, _codes())


def test_load_codes_file_explicit_layout(tmp_path):
    np.save(tmp_path / "square.npy", _codes(9, 9))
    np.testing.assert_array_equal(load_codes_file(tmp_path / "square.npy", 9, "TC"), _codes(9, 9))
    np.testing.assert_array_equal(load_codes_file(tmp_path / "square.npy", 9, "CT"), _codes(9, 9).T)


@pytest.mark.parametrize(
    "array, match",
    [
        (_codes() + 1000, r"codes must be in 0..1023, got min 1000 max 1044"),
        (_codes() - 1, r"got min -1 max 43"),
        (_codes(5, 8), r"shape \(5, 8\) has no axis of 9 codebooks"),
        (_codes(9, 9), r"ambiguous; set prepare.codes_layout"),
        (_codes().astype(np.float32), r"codes must be integers, got float32"),
        (_codes()[None], r"must be 2-D"),
    ],
)
def test_load_codes_file_refuses_bad_codes(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=match) as err:
        load_codes_file(tmp_path / "bad.npy", 9, "auto")
    assert str(tmp_path / "bad.npy") in str(err.value)


def test_load_codes_file_wrong_count_with_explicit_layout_and_unreadable(tmp_path):
    np.save(tmp_path / "ct.npy", _codes(5, 8).T)
    with pytest.raises(ValueError, match=r"ct.npy: 8 codebooks with codes_layout CT, the codec has 9"):
        load_codes_file(tmp_path / "ct.npy", 9, "CT")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken.pt: cannot read codes"):
        load_codes_file(tmp_path / "broken.pt", 9, "auto")


# ---- text


def test_text_normalisation_and_opt_out(tmp_path):
    assert normalize_text("[S1]  Cafe\u0301 \t ok\n[de]  ja ") == "[S1] Caf\u00e9 ok [de] ja"
    wav(tmp_path / "a.wav")
    (tmp_path / "metadata.csv").write_text("a.wav|[S1]  Cafe\u0301 \t ok\n", encoding="utf-8")
    assert clips(tmp_path)[0].text == "[S1] Caf\u00e9 ok"
    assert clips(tmp_path, normalize_text=False)[0].text == "[S1]  Cafe\u0301 \t ok"
