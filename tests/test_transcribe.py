"""`dia-tpu transcribe`: long recordings -> segments, [S1]/[S2] transcripts, speakers, a folder prepare reads.

The end-to-end tests run the real parts (Silero VAD, PocketSphinx, resemblyzer) on a synthetic podcast that
scripts/make_podcast.py makes with espeak-ng from a known script, and compare with that script."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import RANDOM_CODEC, ROOT, tiny, two_process_launch

from dia_tpu.cli import main as cli
from dia_tpu.config import ConfigError, load
from dia_tpu.data.prepare import prepare
from dia_tpu.evaluation.text import word_errors
from dia_tpu.listen.asr import basic_normalise
from dia_tpu.training.recipe import train
from dia_tpu.transcribe import run as run_module
from dia_tpu.transcribe.regions import PAD, Region, group
from dia_tpu.transcribe.run import transcribe
from dia_tpu.transcribe.speakers import assign_from_turns, cluster, dialogue_text, name_voices
from dia_tpu.transcribe.spoken import spoken

SETTINGS = ["transcribe.asr=pocketsphinx", "transcribe.speakers=2", "prepare.max_seconds=12"]


def config(*extra: str):
    return load(ROOT / "configs/demo.yaml", [*RANDOM_CODEC, *SETTINGS, *extra])


# ---- the pieces


def test_clusters_to_a_count_or_by_threshold_labelled_in_order_of_appearance():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    rows = np.array([2, 0, 0, 1, 2, 1, 0, 2])
    points = centres[rows] + rng.normal(scale=0.05, size=(len(rows), 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    expected = np.array([0, 1, 1, 2, 0, 2, 1, 0])  # first row's cluster is 0, the next new one 1, ...
    assert (cluster(points, 3, 0.0) == expected).all()
    assert (cluster(points, 0, 0.9) == expected).all()  # estimated: within-cluster similarity ~0.99
    assert (cluster(points, 0, -1.0) == 0).all()  # any pair alike enough: one speaker
    assert cluster(points, 2, 0.0).max() == 1


def test_clusters_join_by_their_mean_similarity():
    # Three voices with similarities a-b 0.9, a-c 0.7, b-c 0.5: once a and b are one speaker, c is 0.6 alike to
    # it on average. Single linkage would take c in at 0.65 (0.7 to a), complete linkage not even at 0.55.
    points = np.linalg.cholesky(np.array([[1.0, 0.9, 0.7], [0.9, 1.0, 0.5], [0.7, 0.5, 1.0]]))
    assert cluster(points, 0, 0.95).tolist() == [0, 1, 2]
    assert cluster(points, 0, 0.65).tolist() == [0, 0, 1]
    assert cluster(points, 0, 0.55).tolist() == [0, 0, 0]
    assert cluster(points, 2, 0.0).tolist() == [0, 0, 1] and cluster(points, 5, 0.0).tolist() == [0, 1, 2]
    assert cluster(points[:1], 0, 0.5).tolist() == [0] and cluster(points[:0], 2, 0.5).tolist() == []


def test_segments_are_cut_in_pauses_and_never_longer_than_the_limit():
    regions = [
        Region(0.5, 3.0),
        Region(3.4, 6.0),
        Region(6.3, 9.5),
        Region(12.0, 13.0),
        Region(13.2, 14.0),
        Region(14.5, 16.0, problem="two voices"),
        Region(16.4, 18.0),
    ]
    segments = group(regions, 20.0, max_seconds=8.0, max_pause=1.5)
    spans = [[(r.start, r.end) for r in s.regions] for s in segments]
    # 0.5-6.0 fits 8 s with padding, adding 6.3-9.5 would not; the 2.5 s pause ends a segment; the region with a
    # problem ends one too and is in none.
    assert spans == [[(0.5, 3.0), (3.4, 6.0)], [(6.3, 9.5)], [(12.0, 13.0), (13.2, 14.0)], [(16.4, 18.0)]]
    assert all(s.seconds <= 8.0 for s in segments)
    # Padding: PAD where the pause allows, half the pause where it is short, so neighbours never overlap.
    assert segments[0].start == pytest.approx(0.5 - PAD) and segments[0].end == pytest.approx(6.15)
    assert segments[1].start == pytest.approx(6.15) and segments[1].end == pytest.approx(9.5 + PAD)
    assert segments[2].end == pytest.approx(14.0 + PAD)  # the pause after is 0.5 s
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))


def test_dialogue_text_tags_turns_in_order_of_appearance():
    def said(*turns):
        return [Region(i, i + 1, speaker=k, text=t) for i, (k, t) in enumerate(turns)]

    assert dialogue_text(said((4, "Hi."), (4, "How are you?"), (1, "Fine."), (4, "Good."))) == (
        "[S1] Hi. How are you? [S2] Fine. [S1] Good.",
        [4, 1],
    )
    assert dialogue_text(said((1, "Fine."), (0, ""), (1, "Yes."))) == ("[S1] Fine. Yes.", [1])
    assert dialogue_text(said((0, "a"), (1, "b"), (2, "c"))) is None


def test_voices_are_named_across_recordings_when_asked():
    a, b = np.eye(4)[:2], np.eye(4)[[1, 2]]
    assert name_voices({"ep1": a, "ep2": b}, 0.0) == {"ep1": {0: "ep1:0", 1: "ep1:1"}, "ep2": {0: "ep2:0", 1: "ep2:1"}}
    named = name_voices({"ep1": a, "ep2": b}, 0.9)
    assert named["ep1"][1] == named["ep2"][0]  # the same voice in both
    assert len({*named["ep1"].values(), *named["ep2"].values()}) == 3


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("It costs $5, or 3.5% more.", "It costs five dollars, or three point five percent more."),
        ("On the 21st of May, 1,205 came.", "On the twenty first of May, one thousand two hundred five came."),
        ("Tom & Jerry scored 2+2=4 at 10.", "Tom and Jerry scored two plus two equals four at ten."),
        ("The 3rd, 12th and 40th (laughs)", "The third, twelfth and fortieth (laughs)"),
    ],
)
def test_numbers_and_symbols_are_spoken(text, said):
    assert spoken(text) == said


def test_a_diarizers_turns_decide_who_speaks():
    """transcribe.diarizer: each stretch takes the speaker whose turns cover most of it (the third: 1.5 s of
    SPEAKER_01 against 1.0 s of SPEAKER_07); one that a second speaker covers half a second of is two voices; one
    no turn covers is dropped."""
    regions = [Region(0.0, 2.0), Region(3.0, 5.0), Region(5.5, 8.0), Region(9.0, 10.0), Region(11.0, 12.0)]
    voices = np.eye(3)
    windows = [voices[[0, 0]], voices[[1]], voices[[0, 1]], voices[[2]], voices[[1]]]
    turns = [
        (6.5, 8.0, "SPEAKER_01"),
        (0.0, 2.2, "SPEAKER_07"),
        (2.8, 5.1, "SPEAKER_01"),
        (5.4, 6.5, "SPEAKER_07"),
        (10.9, 12.0, "SPEAKER_01"),
    ]
    centroids = assign_from_turns(regions, windows, turns, 0.5)
    assert [r.speaker for r in regions[:3]] + [regions[4].speaker] == [0, 1, 1, 1]  # numbered by first turn
    assert [r.problem for r in regions[:2]] == [None, None] and regions[4].problem is None
    assert regions[2].problem.startswith("two voices in one stretch")
    assert regions[3].problem == "no speaker turn from the diarizer"
    assert np.allclose(centroids, voices[:2])  # from the clean stretches only
    assert regions[1].similarity == pytest.approx(1.0)


def test_bad_settings_are_named_in_one_error():
    with pytest.raises(ConfigError) as err:
        load(
            ROOT / "configs/demo.yaml",
            [
                "transcribe.speaker_threshold=1.5",
                "transcribe.min_seconds=40",
                "transcribe.normalize=digits",
                "transcribe.diarizer=pyannote",
            ],
        )
    message = str(err.value)
    assert "transcribe.speaker_threshold" in message and "transcribe.min_seconds" in message
    assert "transcribe.normalize" in message
    assert "transcribe.diarizer: 'pyannote' is not none or pyannote:<hub id or folder>" in message


def test_the_pyannote_diarizer_without_pyannote_installed_is_one_line(tmp_path):
    if importlib.util.find_spec("pyannote") is not None:
        pytest.skip("pyannote.audio is installed here")
    spec = "pyannote:pyannote/speaker-diarization-3.1"
    with pytest.raises(SystemExit) as stop:
        cli(
            [
                "transcribe",
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--input",
                str(recording(tmp_path / "a.wav", 1)),
                "--output",
                str(tmp_path / "out"),
                "transcribe.asr=pocketsphinx",
                f"transcribe.diarizer={spec}",
            ]
        )
    assert stop.value.code == (
        f"dia-tpu transcribe: error: transcribe.diarizer={spec} needs pyannote.audio: pip install pyannote.audio"
    )


def test_a_missing_input_is_one_line_naming_it(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli(
            [
                "transcribe",
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--input",
                str(tmp_path / "nowhere"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert stop.value.code == f"dia-tpu transcribe: error: {tmp_path / 'nowhere'}: no such file or folder"


def test_an_output_folder_it_did_not_write_is_refused_untouched(tmp_path):
    mine = tmp_path / "mine"
    (mine / "audio" / "talk").mkdir(parents=True)
    (mine / "audio" / "talk" / "talk_0000.flac").write_bytes(b"my own recording")
    (mine / "metadata.csv").write_text("file|text\n")
    with pytest.raises(SystemExit) as stop:
        cli(
            [
                "transcribe",
                "--config",
                str(ROOT / "configs/demo.yaml"),
                "--input",
                str(ROOT / "data/sample/audio"),
                "--output",
                str(mine),
            ]
        )
    assert stop.value.code == (
        f"dia-tpu transcribe: error: --output {mine} exists and is not a dia_tpu transcription "
        "(audio/, metadata.csv); dia_tpu replaces only what it wrote: move it away or choose "
        "another folder"
    )
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == [
        "audio",
        "audio/talk",
        "audio/talk/talk_0000.flac",
        "metadata.csv",
    ]


def recording(path: Path, *gains: float) -> Path:
    """The bundled sample's first clips, one per gain (clipped to full scale), 2 s apart, as one recording."""
    lines = (ROOT / "data/sample/metadata.csv").read_text().splitlines()[1 : len(gains) + 1]
    pieces = []
    for line, gain in zip(lines, gains, strict=True):
        wave, rate = sf.read(ROOT / "data/sample" / line.split("|")[0], dtype="float32")
        pieces += [np.zeros(2 * rate, np.float32), np.clip(wave * gain, -1.0, 1.0)]
    sf.write(path, np.concatenate([*pieces, np.zeros(rate, np.float32)]), rate)
    return path


def test_quiet_clipped_and_unsure_speech_is_dropped_with_its_reason(tmp_path, tiny_whisper):
    source = recording(tmp_path / "talk.wav", 1.0, 0.04, 40.0)  # -22, -50 dBFS and clipped
    out = tmp_path / "out"
    report = transcribe(config("transcribe.speakers=1"), [str(source)], out)
    dropped = (out / "dropped.tsv").read_text().splitlines()[1:]
    reasons = [line.split("\t")[3] for line in dropped]
    assert report["segments"] == 1 and len(rows_of(out)) == 1
    assert len(reasons) == 2 and reasons[0].startswith("too quiet (") and reasons[1].startswith("clipped (")
    # A random Whisper is unsure of everything it says.
    out = tmp_path / "whisper"
    report = transcribe(
        config(f"transcribe.asr=whisper:{tiny_whisper}", "transcribe.min_confidence=0.5", "transcribe.speakers=1"),
        [str(source)],
        out,
    )
    assert report["segments"] == 0 and report["judges"]["recogniser"].startswith("whisper ")
    assert "recogniser unsure (confidence 0." in (out / "dropped.tsv").read_text()


# ---- a synthetic podcast, end to end


@pytest.fixture(scope="module")
def podcast(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("podcast")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/make_podcast.py"),
            "--out",
            str(folder),
            "--episodes",
            "2",
            "--turns",
            "6",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT / "scripts",
    )
    return folder, json.loads((folder / "truth.json").read_text())


@pytest.fixture(scope="module")
def transcribed(podcast, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("transcribed") / "out"
    return out, transcribe(config(), [str(podcast[0])], out)


def rows_of(out: Path) -> list[dict]:
    lines = (out / "metadata.csv").read_text().splitlines()
    names = lines[0].split("|")
    return [dict(zip(names, line.split("|"), strict=True)) for line in lines[1:]]


def sentences(truth: list[dict], episode: str) -> list[dict]:
    """The script's sentences in one episode, each with its turn's speaker."""
    return [
        {**sentence, "speaker": turn["speaker"], "episode": episode}
        for turn in truth
        if turn["episode"] == episode
        for sentence in turn["sentences"]
    ]


def said_in(truth: list[dict], row: dict) -> list[dict]:
    """The script's sentences that a segment holds (more than half of each)."""
    start, end = float(row["start"]), float(row["end"])
    return [
        s
        for s in sentences(truth, Path(row["source"]).name)
        if min(end, s["end"]) - max(start, s["start"]) > 0.5 * (s["end"] - s["start"])
    ]


def test_the_podcast_becomes_segments_cut_between_sentences_with_the_right_speakers(podcast, transcribed):
    _, truth = podcast
    out, report = transcribed
    rows = rows_of(out)
    assert report["recordings"] == 2 and report["segments"] == len(rows) >= 8
    assert report["speakers"] == {str(podcast[0] / "episode_1.wav"): 2, str(podcast[0] / "episode_2.flac"): 2}
    for row in rows:
        assert (out / row["file"]).is_file() and float(row["end"]) - float(row["start"]) <= 12.0
        # Cuts fall between sentences, never inside one (0.2 s: espeak-ng's own silence around each).
        for cut in (float(row["start"]), float(row["end"])):
            inside = [s for s in sentences(truth, Path(row["source"]).name) if s["start"] + 0.2 < cut < s["end"] - 0.2]
            assert not inside, (row, cut, inside)
    # The overlapping stretch is left out, with its reason; the rest of the script's sentences are kept.
    assert "two voices in one stretch" in (out / "dropped.tsv").read_text()
    held = [s for row in rows for s in said_in(truth, row)]
    for s in held:  # no kept sentence is spoken over by the other voice
        others = [o for o in sentences(truth, s["episode"]) if o["speaker"] != s["speaker"]]
        assert not [o for o in others if min(o["end"], s["end"]) > max(o["start"], s["start"])], s
    clean = [s for turn in truth if not turn["overlap"] for s in turn["sentences"]]
    assert len(held) >= 0.9 * len(clean), (len(held), len(clean))

    # Tags: the script's speakers, in order of appearance, match the segment's [S1]/[S2] turns.
    right = 0
    for row in rows:
        order = list(dict.fromkeys(s["speaker"] for s in said_in(truth, row)))
        expected = [f"[S{order.index(k) + 1}]" for k, _ in itertools.groupby(s["speaker"] for s in said_in(truth, row))]
        right += [w for w in row["text"].split() if w in ("[S1]", "[S2]")] == expected
    assert right >= 0.9 * len(rows), f"{right} of {len(rows)} segments tagged as the script"
    # Speaker column: each segment's voices in tag order, one voice one id throughout a recording.
    voice_of = {}
    for row in rows:
        order = dict.fromkeys(s["speaker"] for s in said_in(truth, row))
        for voice, speaker in zip(row["speaker"].split("+"), order, strict=True):
            assert voice_of.setdefault(voice, speaker) == speaker

    # Word times (PocketSphinx's own) beside every segment: the row's words in order inside the clip, each said
    # (its middle within 0.15 s of a sentence) by the voice its tag names.
    assert report["segments_with_word_times"] == len(rows)
    placed = total = 0
    for row in rows:
        timed = json.loads((out / row["file"]).with_suffix(".json").read_text())["alignments"]
        assert [word for word, _, _ in timed] == [w for w in row["text"].split() if w not in ("[S1]", "[S2]")]
        edges = [t for _, span, _ in timed for t in span]
        assert edges == sorted(edges) and 0 <= edges[0] and edges[-1] <= float(row["end"]) - float(row["start"])
        order = list(dict.fromkeys(s["speaker"] for s in said_in(truth, row)))
        for _, (start, end), tag in timed:
            middle, voice = float(row["start"]) + (start + end) / 2, order[min(int(tag[1:]), len(order)) - 1]
            near = [
                s for s in sentences(truth, Path(row["source"]).name) if s["start"] - 0.15 <= middle <= s["end"] + 0.15
            ]
            placed, total = placed + any(s["speaker"] == voice for s in near), total + 1
    assert placed >= 0.9 * total, f"{placed} of {total} words inside a sentence of their voice"

    # Words: PocketSphinx on espeak-ng speech is weak (its WER on the bundled sample's originals is 0.82).
    errors = words = 0
    for row in rows:
        reference = basic_normalise(" ".join(s["text"] for s in said_in(truth, row)))
        heard = basic_normalise(" ".join(w for w in row["text"].split() if w not in ("[S1]", "[S2]")))
        found = word_errors(reference, heard)
        errors, words = errors + found.errors, words + found.length
    wer = errors / words
    print(f"podcast: {len(rows)} segments, WER {wer:.3f} ({errors}/{words}), tags right in {right}")
    assert wer <= 0.85, wer
    assert set(report["real_time_factor"]) == {"vad", "speaker_embedding", "clustering", "recogniser", "total"}


def test_the_output_prepares_and_trains_as_it_is(transcribed, dia2_model, tmp_path):
    out, _ = transcribed
    codes = tmp_path / "codes"
    manifest = prepare(config(), out, codes)
    assert manifest["skipped"] == 0 and manifest["encoded"] == len(rows_of(out))
    # For Dia2, its words are timed by the recogniser: no aligner needed, the times as transcribe wrote them.
    dia2 = ["--config", str(ROOT / "configs/dia2-1b.yaml"), "--input", str(out), "--output", str(tmp_path / "dia2")]
    cli(["prepare", *dia2, f"model.pretrained={dia2_model}", "prepare.aligner=none"])
    rows = datasets.load_from_disk(str(tmp_path / "dia2"))
    assert len(rows) == len(rows_of(out))
    first = json.loads((out / rows[0]["source_id"]).with_suffix(".json").read_text())["alignments"]
    assert [(w["word"], w["start"], w["speaker"]) for w in rows[0]["words"]] == [
        (word, round(start * 12.5), int(tag[1:])) for word, (start, _), tag in first
    ]
    run = tmp_path / "run"
    train(tiny(codes, run, "train.max_steps=2", "data.eval_size=2", "eval.eval_every=2", "data.max_text_tokens=256"))
    assert (run / "final" / "model.safetensors").is_file()


def test_an_interrupted_run_resumes_with_the_unfinished_recordings_only(podcast, transcribed, tmp_path, monkeypatch):
    done = []
    real = run_module.transcribe_recording

    def dies_in_the_second(recording, *args):
        if done:
            raise KeyboardInterrupt
        done.append(recording.name)
        return real(recording, *args)

    monkeypatch.setattr(run_module, "transcribe_recording", dies_in_the_second)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        transcribe(config(), [str(podcast[0])], out)
    assert done == ["episode_1"] and not (out / "metadata.csv").exists()
    again = []

    def counts(recording, *args):
        again.append(recording.name)
        return real(recording, *args)

    monkeypatch.setattr(run_module, "transcribe_recording", counts)
    transcribe(config(), [str(podcast[0])], out)
    assert again == ["episode_2"]
    straight, _ = transcribed
    assert (out / "metadata.csv").read_text() == (straight / "metadata.csv").read_text()
    assert (out / "dropped.tsv").read_text() == (straight / "dropped.tsv").read_text()
    for row in rows_of(out):
        assert (out / row["file"]).read_bytes() == (straight / row["file"]).read_bytes()

    # Other settings redo every recording, from the first.
    def stops(recording, *args):
        again.append(recording.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "transcribe_recording", stops)
    again.clear()
    with pytest.raises(KeyboardInterrupt):
        transcribe(config("transcribe.min_seconds=2"), [str(podcast[0])], out)
    assert again == ["episode_1"]


def test_two_processes_share_the_recordings_and_write_the_same(podcast, transcribed, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            *two_process_launch(29549),
            "-m",
            "dia_tpu.cli",
            "transcribe",
            "--config",
            str(ROOT / "configs/demo.yaml"),
            "--input",
            str(podcast[0]),
            "--output",
            str(tmp_path / "two"),
            *RANDOM_CODEC,
            *SETTINGS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    straight, _ = transcribed
    assert (tmp_path / "two" / "metadata.csv").read_text() == (straight / "metadata.csv").read_text()
    assert "segments" in done.stdout and done.stdout.count(" h kept") == 1  # the summary, once
