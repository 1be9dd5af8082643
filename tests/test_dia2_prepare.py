"""`dia-tpu prepare` for Dia2 (`dia_tpu.families.dia2.prepare`): the model's Mimi codes, and each clip's words timed
from the source or by the aligner, checked and stored in frames; what cannot be timed is a named skip."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT

from dia_tpu.cli import main
from dia_tpu.data.audio import load_audio
from dia_tpu.errors import UserError
from dia_tpu.families.dia2.assets import load_mimi
from dia_tpu.families.dia2.config import read_config
from dia_tpu.families.dia2.data import timing_problems
from dia_tpu.families.dia2.prefix import encode
from dia_tpu.families.dia2.timings import script_words
from dia_tpu.families.dia2.tiny import transcript_words, write_demo_model
from dia_tpu.studio import Models, Offer, speak

CONFIG = str(ROOT / "configs/dia2-1b.yaml")


def prepare(model, source, out, *overrides: str) -> dict:
    paths = ["--input", str(source), "--output", str(out)]
    main(["prepare", "--config", CONFIG, *paths, f"model.pretrained={model}", *overrides])
    return json.loads((out / "manifest.json").read_text())


def skipped(out) -> dict[str, str]:
    lines = (out / "skipped.tsv").read_text().splitlines()[1:]
    return {line.split("\t")[1]: line.split("\t")[2] for line in lines}


def test_the_bundled_sample_prepares_with_every_word_timed_and_codes_as_the_whole_clip_encodes(dia2_model, tmp_path):
    source = tmp_path / "sample"
    shutil.copytree(ROOT / "data/sample", source)
    manifest = prepare(dia2_model, source, tmp_path / "codes")
    assert manifest["codec"] == {"codec": str(dia2_model / "mimi"), "codebooks": 4}
    assert manifest["aligner"].startswith("espeak-ng") and manifest["frame_rate"] == 12.5
    assert (manifest["kept"], manifest["skipped"], manifest["num_codebooks"]) == (32, 0, 4)
    assert "long_text" not in manifest  # Dia2 reads its text word by word: no limit on a transcript's length
    rows = datasets.load_from_disk(str(tmp_path / "codes"))
    assert timing_problems(rows["words"], rows["frames"], rows["source_id"]) == []
    for row in rows:
        # Every word of the transcript, as generation splits it, in order, with its speaker's number.
        expected = [(word, speaker) for word, speaker, heard in script_words(row["text"]) if heard]
        assert [(w["word"], w["speaker"]) for w in row["words"]] == expected
        starts = [w["start"] for w in row["words"]]
        assert starts == sorted(starts) and row["words"][-1]["end"] <= row["frames"]
    codec = load_mimi(dia2_model, read_config(dia2_model / "config.json"))
    for row in rows.select(range(3)):
        wave = load_audio(source / row["source_id"], 24000)
        np.testing.assert_array_equal(np.asarray(row["codes"]), encode(codec, wave[None], 4)[0].T.numpy())

    # Again: nothing encoded or aligned anew; a transcript fixed: that clip alone.
    assert prepare(dia2_model, source, tmp_path / "codes")["encoded"] == 0
    lines = (source / "metadata.csv").read_text().splitlines()
    lines[3] = lines[3].replace("Where should we camp", "Where shall we camp")
    (source / "metadata.csv").write_text("\n".join(lines) + "\n")
    again = prepare(dia2_model, source, tmp_path / "codes")
    assert again["encoded"] == 1
    assert "shall" in [w["word"] for w in datasets.load_from_disk(str(tmp_path / "codes"))[2]["words"]]


def timed(folder, name: str, seconds: float, words: list) -> None:
    wave = np.random.default_rng(len(name)).uniform(-0.3, 0.3, round(seconds * 24000)).astype(np.float32)
    sf.write(folder / f"{name}.wav", wave, 24000)
    (folder / f"{name}.json").write_text(json.dumps({"alignments": words}))


def test_word_timings_from_the_source_are_read_as_they_are_and_what_cannot_be_timed_is_a_named_skip(
    dia2_model, tmp_path
):
    source = tmp_path / "moshi"
    source.mkdir()
    # moshi-finetune's folders: each recording with its timed words beside it, no transcript.
    timed(source, "dialogue", 2.0, [["hello", [0.1, 0.5], "A"], ["there", [0.6, 0.9], "A"], ["hi", [1.2, 1.6], "B"]])
    timed(source, "outside", 1.0, [["hello", [0.2, 0.5], "A"], ["there", [0.6, 1.8], "A"]])
    timed(source, "overlap", 2.0, [["hello", [0.1, 0.8], "A"], ["hi", [0.5, 0.9], "B"]])
    timed(source, "three", 2.0, [["hello", [0.1, 0.3], "A"], ["hi", [0.5, 0.7], "B"], ["friend", [1.0, 1.2], "C"]])
    # A word a frame: "[S1] hello" is two tokens, and the words after it fall further and further behind.
    fast = [[word, [0.08 * k, 0.08 * (k + 1)], "A"] for k, word in enumerate(["hello", "there", "hi", "again"])]
    timed(source, "fast", 1.0, fast)
    timed(source, "untimed", 1.0, [])
    (source / "untimed.json").unlink()
    (source / "untimed.txt").write_text("[S1] hello there")
    np.save(source / "codes.npy", np.zeros((4, 20), np.int16))
    (source / "codes.txt").write_text("[S1] hello there")

    manifest = prepare(dia2_model, source, tmp_path / "codes", "prepare.aligner=none")
    assert manifest["aligner"] is None and manifest["kept"] == 1
    row = datasets.load_from_disk(str(tmp_path / "codes"))[0]
    assert row["text"] == "[S1] hello there [S2] hi"
    # Seconds to frames at 12.5 a second, speakers numbered in the order the file names them.
    assert row["words"] == [
        {"word": "hello", "start": 1, "end": 6, "speaker": 1},
        {"word": "there", "start": 8, "end": 11, "speaker": 1},
        {"word": "hi", "start": 15, "end": 20, "speaker": 2},
    ]
    reasons = skipped(tmp_path / "codes")
    assert reasons["outside.wav"] == "a word outside the clip: 'there' at 0.60-1.80 s, the clip 1.00 s"
    assert reasons["overlap.wav"] == "overlapping turns: 'hi' starts before 'hello' ends"
    assert reasons["three.wav"].startswith("more than two speakers in the timings ('A', 'B', 'C')")
    assert reasons["fast.wav"].startswith("too many tokens for the frames: 'there' would be fed 3 frames late")
    assert reasons["untimed.wav"] == "no word timings, and prepare.aligner is none"
    assert reasons["codes.npy"].startswith("codes encoded elsewhere come without audio to align")
    assert manifest["skipped_by_reason"]["too many tokens for the frames"] == 1
    assert manifest["skipped_by_reason"]["a word outside the clip"] == 1


def test_a_word_the_aligner_cannot_place_skips_its_clip_with_the_aligners_reason(dia2_model, tmp_path):
    source = tmp_path / "words"
    source.mkdir()
    texts = {"known": "[S1] Great. Where should we camp this weekend?", "unknown": "[S1] Great. Zorblax?"}
    for name, text in texts.items():
        shutil.copy(ROOT / "data/sample/audio/utt_002.flac", source / f"{name}.flac")
        (source / f"{name}.txt").write_text(text)
    manifest = prepare(dia2_model, source, tmp_path / "codes", "prepare.aligner=pocketsphinx")
    assert manifest["aligner"].startswith("pocketsphinx") and manifest["kept"] == 1
    assert skipped(tmp_path / "codes") == {"unknown.flac": "not in pocketsphinx's dictionary: zorblax"}


def test_the_dia2_demo_runs_from_the_bundled_sample_to_judged_audio(tmp_path):
    """`make demo-dia2`'s commands, shortened: a tiny random Dia2, the sample aligned and encoded, trained with
    samples and evaluation, exported in upstream's format, spoken, reported and judged."""
    base, run = tmp_path / "base", tmp_path / "run"
    write_demo_model(base, transcript_words(ROOT / "data/sample"))
    config = str(ROOT / "configs/demo-dia2.yaml")
    paths = [f"model.pretrained={base}", f"data.dataset={tmp_path / 'codes'}", f"output.dir={run}"]
    main(["prepare", "--config", config, *paths])
    shorter = ["train.max_steps=20", "train.warmup_steps=2", "train.save_every=10", "eval.eval_every=10"]
    main(["train", "--config", config, *paths, *shorter, "samples.every=20", "samples.max_seconds=1"])
    assert sorted(p.name for p in (run / "samples" / "step_000020").glob("*.wav")) == ["clone.wav", "plan.wav"]
    assert (run / "final" / "config.json").is_file() and (run / "final" / "mimi").is_dir()
    x, limit = tmp_path / "x.wav", ["--max-seconds", "2"]
    main(["generate", "--model", str(run / "final"), "--text", "[S1] Hello there.", "--out", str(x), *limit])
    assert sf.info(x).samplerate == 24000
    main(["report", str(run)])
    page = (run / "report.html").read_text()
    assert "<audio" in page and ">clone<" in page  # the samples' players
    prompts = tmp_path / "prompts.jsonl"
    lines = (ROOT / "configs/demo-prompts.jsonl").read_text().splitlines()
    prompts.write_text("\n".join(line.replace("../data", str(ROOT / "data")) for line in lines[-2:]) + "\n")
    judged = ["--out", str(tmp_path / "judged"), "--max-seconds", "4"]
    main(["evaluate", "--model", str(run / "final"), "--prompts", str(prompts), *judged])
    rows = [json.loads(line) for line in (tmp_path / "judged" / "rows.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["camp", "clone"] and all(row["wer"] is not None for row in rows)

    # The studio speaks a run's Dia2 checkpoints as generate does, and continues an uploaded voice.
    models = Models("cpu", Offer(run_dir=str(run)))
    final, first = str(run / "final"), str(run / "checkpoints" / "step_10")
    assert {final, first} <= set(models.offer.models())
    line, flags = "[S1] Hello there.", ["--temperature", "0.9", "--top-k", "20", "--seed", "3", "--max-seconds", "1"]
    main(["generate", "--model", final, "--text", line, "--out", str(tmp_path / "g.wav"), *flags])
    rate, wave, _ = speak(models, final, None, line, None, "", None, 0.9, None, 20, 3, 1.0)
    # Within the wav writer's rounding and scaling (libsndfile's, 2 steps of 65536); another checkpoint is far off.
    assert rate == 24000 and np.abs(wave - sf.read(tmp_path / "g.wav", dtype="int16")[0].astype(int)).max() <= 2
    _, earlier, _ = speak(models, first, None, line, None, "", None, 0.9, None, 20, 3, 1.0)
    assert len(earlier) != len(wave) or np.abs(earlier - wave.astype(int)).max() > 1000
    clip = str(ROOT / "data/sample/prompts/utt_000_hello_there.flac")
    _, continued, _ = speak(models, final, None, line, clip, "[S1] Hello there,", None, 0.9, None, 20, 3, 1.0)
    assert not np.array_equal(continued, wave)
    with pytest.raises(UserError, match="needs what is said in it"):
        speak(models, final, None, line, clip, "", None, 0.9, None, 20, 3, 1.0)

    # Published in upstream's format, with a card that says how to load it; nothing of this machine in it.
    repo = tmp_path / "repo"
    main(["push", "--model", str(run / "final"), "--repo", "me/demo-dia2", "--dry-run", str(repo), "--license", "mit"])
    assert {"config.json", "model.safetensors", "dia2_assets.json", "tokenizer.json", "config.yaml"} <= {
        p.name for p in repo.iterdir()
    }
    assert (repo / "mimi" / "config.json").is_file() and sorted(p.name for p in (repo / "samples").iterdir()) == [
        "clone.wav",
        "plan.wav",
    ]
    card = (repo / "README.md").read_text()
    assert 'Dia2.from_repo(\'me/demo-dia2\', device="cuda", dtype="bfloat16", mimi_id="DIR/mimi")' in card
    assert "dia-tpu generate --model me/demo-dia2" in card and "espeak-ng" in card and "license: mit" in card
    assert str(tmp_path) not in (repo / "config.yaml").read_text() + card
    with pytest.raises(SystemExit):
        main(["push", "--model", str(run / "final"), "--repo", "me/x", "--dry-run", str(tmp_path / "r2"), "--adapter"])
