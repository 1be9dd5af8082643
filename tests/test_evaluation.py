"""Judging audio without listening: error rates, the signal checks on real (espeak-ng) speech from the bundled
sample and on broken versions of it, the offline recogniser and speaker encoder on that speech, and the Whisper
and x-vector paths on tiny random checkpoints (batching and decoding, not accuracy)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT

from dia_tpu.evaluation.signal import frame_levels, measure, problems
from dia_tpu.evaluation.text import Errors, char_errors, spoken_text, word_errors
from dia_tpu.listen.asr import basic_normalise, load_recogniser
from dia_tpu.listen.speaker import load_speaker_encoder, similarity

SAMPLE = ROOT / "data/sample"


def sample_clips(n: int | None = None) -> list[dict]:
    """The bundled clips: wave (float32, 22.05 kHz), rate, text, speaker."""
    rows = list(csv.DictReader(open(SAMPLE / "metadata.csv"), delimiter="|"))[:n]
    clips = []
    for row in rows:
        wave, rate = sf.read(SAMPLE / row["file"], dtype="float32")
        clips.append({"wave": wave, "rate": rate, "text": row["text"], "speaker": row["speaker"]})
    return clips


@pytest.mark.parametrize(
    ("script", "spoken"),
    [
        ("[S1] Hello there, are you ready? [S2] (laughs) Yes!", "Hello there, are you ready? Yes!"),
        ("[de] Guten Tag (clears throat) zusammen", "Guten Tag zusammen"),
    ],
)
def test_tags_and_cues_are_not_speech(script, spoken):
    assert spoken_text(script) == spoken


def test_error_rates():
    assert basic_normalise("Yes, I've the MAP — right here.") == "yes i've the map right here"
    assert word_errors("the cat sat on the mat", "the cat sat on mat") == Errors(1, 6)
    assert word_errors("a b c", "x a b c y").errors == 2
    assert char_errors("abc", "abd") == Errors(1, 3)
    total = word_errors("a b", "a") + word_errors("c d e f", "c d e f")
    assert total.rate == pytest.approx(1 / 6)
    assert Errors(0, 0).rate == 0 and Errors(2, 0).rate == 1


def test_errors_tell_truncated_speech_from_babbling():
    said = "are you ready to plan the trip"
    truncated = word_errors(said, "are you ready")
    babbling = word_errors(said, "are you ready to plan the trip to the trip to")
    # The same error rate, told apart by what kind of errors make it.
    assert truncated.rate == babbling.rate == 4 / 7
    assert (truncated.substitutions, truncated.deletions, truncated.insertions) == (0, 4, 0)
    assert (babbling.substitutions, babbling.deletions, babbling.insertions) == (0, 0, 4)
    misheard = word_errors(said, "are you steady to plan a trip")
    assert (misheard.substitutions, misheard.deletions, misheard.insertions) == (2, 0, 0)
    total = truncated + babbling + misheard
    assert (total.errors, total.substitutions, total.deletions, total.insertions) == (10, 2, 4, 4)
    chars = char_errors("abc", "ab")
    assert (chars.substitutions, chars.deletions, chars.insertions) == (0, 1, 0)


def test_clean_speech_has_no_problems_and_each_damage_its_own():
    clip = sample_clips(3)[2]  # "[S1] Great. Where should we camp this weekend?"
    wave, rate = clip["wave"], clip["rate"]
    ref = len(wave) / rate
    assert problems(measure(wave, rate, reference_seconds=ref)) == []
    # The second half replaced by silence.
    half = wave.copy()
    half[len(wave) // 2 :] = 0
    assert problems(measure(half, rate, reference_seconds=ref)) == ["trailing_silence"]
    # A 0.6 s stretch played four times over.
    start, stop = int(0.8 * rate), int(1.4 * rate)
    looped = np.concatenate([wave[:stop], *[wave[start:stop]] * 3, wave[stop:]])
    m = measure(looped, rate, reference_seconds=ref)
    assert problems(m) == ["loop"] and m.loop_s == pytest.approx(1.8, abs=0.1)
    # Cut in the middle of a word: at the loudest frame after the first second.
    levels = frame_levels(wave, rate)
    frame = 50 + int(np.argmax(levels[50:]))
    assert "cut_off" in problems(measure(wave[: int((frame + 0.5) * 0.02 * rate)], rate))
    # Three sentences of one speaker, the last half at twice the speed.
    said = np.concatenate([c["wave"] for c in sample_clips(7)[2::2]])
    assert problems(measure(said, rate)) == []
    fast = np.concatenate([said[: len(said) // 2], said[len(said) // 2 :: 2]])
    assert problems(measure(fast, rate)) == ["speeds_up"]
    # Three times as long as the reference, never ended, clipped, not finite.
    assert problems(measure(np.tile(wave, 3), rate, ended=False, reference_seconds=ref)) == ["no_eos", "too_long"]
    assert "clipping" in problems(measure(np.clip(wave * 20, -1, 1), rate))
    broken = wave.copy()
    broken[100] = np.nan
    assert problems(measure(broken, rate))[0] == "non_finite"
    assert problems(measure(wave * 1e-4, rate)) == ["silent"]


def test_an_utterance_that_ends_at_once_is_measured_not_a_crash():
    m = measure(np.zeros(0, np.float32), 44100, ended=True, reference_seconds=2.0, codes=np.zeros((0, 9), int))
    assert m.seconds == 0 and problems(m) == ["empty"]
    assert problems(measure(np.zeros(0, np.float32), 44100, ended=False)) == ["empty", "no_eos"]


def test_code_checks_find_stuck_frames_and_collapsed_codebooks():
    rng = np.random.default_rng(0)
    wave = sample_clips(1)[0]["wave"]
    varied = rng.integers(0, 1024, (200, 9))
    assert problems(measure(wave, 22050, codes=varied)) == []
    stuck = np.repeat(varied[:20], 10, axis=0)  # every frame held for ten
    assert "stuck_frames" in problems(measure(wave, 22050, codes=stuck))
    collapsed = varied.copy()
    collapsed[:, 0] = rng.integers(0, 3, 200)  # codebook 0 uses three tokens
    assert problems(measure(wave, 22050, codes=collapsed)) == ["low_entropy"]


def test_the_offline_recogniser_hears_speech_and_not_noise():
    clips = sample_clips(8)
    asr = load_recogniser("pocketsphinx")
    assert "pocketsphinx 5" in asr.name and "weak" in asr.name
    heard = asr.transcribe([c["wave"] for c in clips], clips[0]["rate"])
    total = sum(
        (
            word_errors(asr.normalise(spoken_text(c["text"])), asr.normalise(h))
            for c, h in zip(clips, heard, strict=True)
        ),
        Errors(0, 0),
    )
    # Measured 0.82 on these eight clips (0.83 on all 32): weak, but far from hearing nothing.
    assert total.rate < 0.92, (total, heard)
    reversed_speech = asr.transcribe([c["wave"][::-1].copy() for c in clips[:4]], clips[0]["rate"])
    noise = np.random.default_rng(0).normal(0, 0.1, 44100).astype(np.float32)
    assert asr.transcribe([noise, np.zeros(0, np.float32)], 22050) == ["", ""]
    backwards = sum(
        (
            word_errors(asr.normalise(spoken_text(c["text"])), asr.normalise(h))
            for c, h in zip(clips[:4], reversed_speech, strict=True)
        ),
        Errors(0, 0),
    )
    assert backwards.rate > total.rate


def test_the_offline_speaker_encoder_tells_the_two_voices_apart():
    clips = sample_clips(12)
    encoder = load_speaker_encoder("resemblyzer")
    embeddings = encoder.embed([c["wave"] for c in clips], clips[0]["rate"])
    assert embeddings.shape == (12, 256)
    assert similarity(embeddings[0], encoder.embed([clips[0]["wave"]], clips[0]["rate"]))[0] > 0.999
    speakers = np.array([c["speaker"] for c in clips])
    sims = embeddings @ embeddings.T
    off_diagonal = ~np.eye(len(clips), dtype=bool)
    same = sims[(speakers[:, None] == speakers[None]) & off_diagonal].mean()
    other = sims[speakers[:, None] != speakers[None]].mean()
    # Measured on all 32 clips: 0.82 and 0.85 within S1 and S2, 0.67 between them.
    assert same > other + 0.1, (same, other)


def test_whisper_transcribes_in_batches_from_a_folder(tiny_whisper):
    asr = load_recogniser(f"whisper:{tiny_whisper}", batch_size=2)
    assert asr.name.startswith(f"whisper {tiny_whisper} (transformers ")
    clips = sample_clips(3)
    waves = [clips[0]["wave"], np.zeros(0, np.float32), clips[1]["wave"], clips[2]["wave"]]
    texts = asr.transcribe(waves, 22050)
    assert len(texts) == 4 and texts[1] == "" and all(isinstance(t, str) for t in texts)
    # Batching changes nothing: each clip alone decodes to the same text.
    assert [asr.transcribe([w], 22050)[0] for w in waves] == texts
    assert asr.normalise("Hello, World!") == "hello world"
    # With confidences (what `dia-tpu transcribe` filters on): the same texts, each with a probability.
    heard = asr.hear(waves, 22050)
    assert [h.text for h in heard] == texts and (heard[1].text, heard[1].confidence) == ("", None)
    assert [0 < h.confidence <= 1 for h in heard if h.text] == [True, True, True]
    # Word times need the checkpoint's alignment heads (OpenAI's name theirs): without them, none.
    assert all(h.words is None for h in heard)
    asr.model.generation_config.alignment_heads = [[0, 0], [0, 1]]
    timed = asr.hear(waves, 22050)
    assert [h.text for h in timed] == texts and timed[1].words == []
    for h, wave in zip(timed, waves, strict=True):
        assert " ".join(w.text for w in h.words).split() == h.text.split()
        edges = [t for w in h.words for t in (w.start, w.end)]
        assert edges == sorted(edges) and all(0 <= t <= len(wave) / 22050 for t in edges), edges


def test_xvector_embeddings_from_a_folder(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        tdnn_dim=(8, 8),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=12,
    )
    torch.manual_seed(0)
    WavLMForXVector(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    encoder = load_speaker_encoder(f"xvector:{tmp_path}")
    clips = sample_clips(2)
    out = encoder.embed([clips[0]["wave"], clips[1]["wave"], np.zeros(0, np.float32)], 22050)
    assert out.shape == (3, 12) and np.allclose(np.linalg.norm(out[:2], axis=1), 1) and not out[2].any()
    assert similarity(out[:1], encoder.embed([clips[0]["wave"]], 22050))[0] == pytest.approx(1, abs=1e-4)
    # Even this random encoder puts the other clip 3e-3 away, so the check above tells one clip from another.
    assert similarity(out[:1], out[1:2])[0] < 1 - 1e-3


@pytest.mark.parametrize("spec", ["whisperx", "pocketsphinx:big", "resemblyzer:x"])
def test_unknown_backends_are_named(spec):
    with pytest.raises(ValueError, match="use "):
        (load_speaker_encoder if spec.startswith("resemblyzer") else load_recogniser)(spec)


@pytest.fixture(scope="module")
def tiny_run(codes_dir, tmp_path_factory):
    """A two-step run of the tiny model on the bundled sample: step_1, step_2 and final/."""
    from conftest import reset_accelerate, tiny

    from dia_tpu.training.recipe import train

    run = tmp_path_factory.mktemp("evaluated") / "run"
    train(
        tiny(codes_dir, run, "train.max_steps=2", "train.save_every=1", "eval.eval_every=1000", "train.report_to=none")
    )
    reset_accelerate()
    return run


def test_evaluate_compares_checkpoints_side_by_side_as_generate_samples(tiny_run, tmp_path):
    from dia_tpu.evaluation.prompts import read_prompts
    from dia_tpu.evaluation.run import evaluate_models
    from dia_tpu.generation.speak import write_speech
    from dia_tpu.generation.synthesize import GenerationSettings
    from dia_tpu.listen.judges import Judges

    run = tiny_run
    lines = tmp_path / "prompts.txt"
    lines.write_text("[S1] Hello there, are you ready?\n\n[S2] Yes, I have the map.\n")
    settings = GenerationSettings(seed=3, max_seconds=1.0)
    judges = Judges(load_recogniser("pocketsphinx"), load_speaker_encoder("resemblyzer"))
    models = [str(run / "checkpoints/step_1"), str(run / "final")]
    summaries = evaluate_models(models, read_prompts(lines), tmp_path / "out", settings, judges, batch_size=2)
    assert list(summaries) == ["step_1", "final"] and all(s["utterances"] == 2 for s in summaries.values())
    table = (tmp_path / "out/summary.md").read_text()
    assert table.startswith("| | step_1 | final |") and "| WER |" in table and "pocketsphinx 5" in table
    rows = [json.loads(line) for line in (tmp_path / "out/rows.jsonl").read_text().splitlines()]
    assert [(r["model"], r["id"]) for r in rows] == [
        (m, i) for m in ("step_1", "final") for i in ("line_0001", "line_0002")
    ]
    assert all({"wer", "cer", "transcript", "problems", "seconds", "ended"} <= set(r) for r in rows)
    # No sampling given: each model's own, which for a checkpoint is its run's samples.* (the demo config's
    # guidance 1.0 and temperature 0.7), as the export holds them; recorded beside each row and summary.
    runs = {"guidance_scale": 1.0, "temperature": 0.7, "top_p": 0.9, "top_k": 45, "greedy": False, "seed": 3}
    assert all(r["sampling"] == runs for r in rows) and summaries["step_1"]["sampling"] == runs
    assert "sampling of final: guidance_scale 1.0, temperature 0.7, top_p 0.9, top_k 45" in table
    # Without a reference, a prompt's expected length is its text at its speaker's pace in the run's data.
    from datasets import load_from_disk

    from dia_tpu.config import read_saved
    from dia_tpu.evaluation.prompts import chars_per_second

    pace = chars_per_second(load_from_disk(read_saved(run / "config.yaml").data.dataset))
    assert rows[1]["reference_seconds"] == pytest.approx(len("Yes, I have the map.") / pace["S2"])
    # S1's pace and everyone's differ from S2's by 0.4 % or more, thousands of times approx's tolerance: a prompt
    # timed at the wrong pace would fail.
    assert all(pace[other] != pytest.approx(pace["S2"], rel=1e-3) for other in ("S1", None))
    # The same text, seed and settings through `dia-tpu generate --text-file`, one at a time: the same audio.
    write_speech(
        str(run / "final"),
        ["[S1] Hello there, are you ready?", "[S2] Yes, I have the map."],
        [tmp_path / "g1.wav", tmp_path / "g2.wav"],
        settings,
        batch_size=1,
    )
    for i in (1, 2):
        generated, _ = sf.read(tmp_path / f"g{i}.wav")
        evaluated, _ = sf.read(tmp_path / f"out/final/line_000{i}.wav")
        assert np.array_equal(generated, evaluated)

    # A JSON-lines prompt with a voice prompt and a reference recording: both similarities and the length ratio.
    clone = tmp_path / "clone.jsonl"
    clone.write_text(
        json.dumps(
            {
                "id": "camp",
                "text": "[S1] Great. Where should we camp?",
                "audio": str(SAMPLE / "audio/utt_000.flac"),
                "transcript": "[S1] Hello there, are you ready to plan the trip?",
                "reference": str(SAMPLE / "audio/utt_002.flac"),
            }
        )
        + "\n"
    )
    summary = evaluate_models([str(run / "final")], read_prompts(clone), tmp_path / "out2", settings, judges)["final"]
    assert {"similarity_prompt", "similarity_reference", "length_ratio"} <= set(summary)
    assert (tmp_path / "out2/final/camp.wav").is_file()


def test_a_model_that_ends_at_once_is_judged_not_crashed(tiny_dia):
    from transformers import DacConfig, DacModel

    from dia_tpu.evaluation.judge import Prompt, judge, summarise
    from dia_tpu.evaluation.prompts import generate
    from dia_tpu.generation.synthesize import GenerationSettings
    from dia_tpu.listen.judges import Judges

    def eos_first(module, args, output):  # channel 0's EOS logit far above everything else
        output = output.clone()
        output[..., 1024] = 1e4
        return output

    torch.manual_seed(0)
    codec = DacModel(DacConfig(encoder_hidden_size=8, decoder_hidden_size=32, sampling_rate=44100)).eval()
    prompts = [Prompt("a", "[S1] Bye."), Prompt("b", "[S2] See you.")]
    hook = tiny_dia.logits_dense.register_forward_hook(eos_first)
    try:
        waves, codes, ended = generate(
            tiny_dia,
            codec,
            [(p, None) for p in prompts],
            GenerationSettings(greedy=True, max_seconds=0.5),
            batch_size=2,
        )
    finally:
        hook.remove()
    assert [len(w) for w in waves] == [0, 0] and ended == [True, True]
    rows = judge(prompts, waves, codes, ended, 44100, Judges(load_recogniser("pocketsphinx")))
    assert [r.problems for r in rows] == [["empty"], ["empty"]] and [r.heard.words.rate for r in rows] == [1.0, 1.0]
    # Nothing said: every word of the script is a deletion.
    words = [r.heard.words for r in rows]
    assert [(w.substitutions, w.deletions, w.insertions) for w in words] == [(0, 1, 0), (0, 2, 0)]
    summary = summarise(rows)
    assert summary["problems"] == {"empty": 2}
    assert (summary["substitution_rate"], summary["deletion_rate"], summary["insertion_rate"]) == (0, 1, 0)
    line = rows[1].to_dict()
    assert (line["wer"], line["words"], line["deletions"], line["transcript"]) == (1.0, 2, 2, "")


def test_evaluate_on_the_held_out_split_of_a_dataset(tiny_run, codes_dir, tmp_path):
    from dia_tpu.cli import main
    from dia_tpu.config import read_saved
    from dia_tpu.data.dataset import split_tables

    out = tmp_path / "out"
    main(
        [
            "evaluate",
            "--model",
            str(tiny_run / "final"),
            "--dataset",
            str(codes_dir),
            "--out",
            str(out),
            "--max-seconds",
            "1",
            "--asr",
            "none",
        ]
    )
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    # The items the run held out (the demo's data.eval_size of them), each with its own clip as the reference.
    held_out = split_tables(read_saved(tiny_run / "config.yaml"))[1]
    assert [r["text"] for r in rows] == list(held_out["text"])
    durations = held_out["duration"]
    assert all(r["reference_seconds"] == pytest.approx(d, abs=0.05) for r, d in zip(rows, durations, strict=True))
    # The clips' lengths differ by more than the tolerance: references taken from the wrong clips would fail.
    shifted = [*durations[1:], durations[0]]
    assert not all(r["reference_seconds"] == pytest.approx(d, abs=0.05) for r, d in zip(rows, shifted, strict=True))
    assert all("similarity_reference" in r for r in rows) and "wer" not in rows[0]
    speakers = list(held_out["speaker"])
    cloned = [r for r, s in zip(rows, speakers, strict=True) if speakers.count(s) > 1]
    assert cloned and all("similarity_prompt" in r for r in cloned)
    with pytest.raises(SystemExit, match="--limit must be >= 1"):
        main(
            [
                "evaluate",
                "--model",
                str(tiny_run / "final"),
                "--dataset",
                str(codes_dir),
                "--out",
                str(out),
                "--limit",
                "0",
            ]
        )


def test_audio_is_judged_during_training(codes_dir, tmp_path, capsys):
    from conftest import scalars, tiny

    from dia_tpu.training.recipe import train

    run = tmp_path / "run"
    train(
        tiny(
            codes_dir,
            run,
            "train.max_steps=2",
            "eval.eval_every=2",
            "eval.audio.every=2",
            "eval.audio.limit=3",
            "eval.audio.max_seconds=1",
            "eval.select_by=wer=1,speaker_similarity=0.5,loss=0.25",
        )
    )
    out = capsys.readouterr().out
    assert "(best eval.select_by" not in out and "best wer=1,speaker_similarity=0.5,loss=0.25" in out
    assert "  audio: WER " in out, out
    logged = scalars(run)
    assert {"audio/wer", "audio/cer", "audio/ended", "audio/with_problems", "audio/speaker_similarity"} <= set(logged)
    rows = [json.loads(line) for line in (run / "evaluations/step_000002/rows.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all((run / "evaluations/step_000002" / f"{r['id']}.wav").is_file() for r in rows)
    state = json.loads((run / "best/train_state.json").read_text())
    wer, similarity = logged["audio/wer"][-1][1], logged["audio/speaker_similarity"][-1][1]
    loss = logged["eval/loss"][-1][1]
    assert state["best_score"] == pytest.approx(wer - 0.5 * similarity + 0.25 * loss, abs=1e-5)
    # The loss term is far larger than the tolerance, so a score that left out a term, or weighed it otherwise,
    # fails. (This model's second of quiet audio has no voice to compare: the similarity's sign is checked below.)
    assert 0.25 * loss > 1e-3, loss


def test_selection_weighs_each_figure_and_counts_similarity_negated():
    from dia_tpu.evaluation.selection import selection_score

    metrics = {"eval/loss": 2.0, "audio/wer": 0.25, "audio/speaker_similarity": 0.75, "audio/mos": 3.0}
    assert selection_score("loss", metrics) == 2.0
    assert selection_score("wer=1,speaker_similarity=0.5,loss=0.25", metrics) == 0.25 - 0.375 + 0.5
    assert selection_score("mos=2,wer", metrics) == -6.0 + 0.25
    # A figure the evaluation lacks (no words, no voice) never makes a best.
    assert selection_score("speaker_similarity", {"eval/loss": 2.0}) == math.inf


def test_cloning_is_judged_on_speakers_held_out_of_training(codes_dir, tmp_path):
    """data.eval_speakers: a voice the model never trained on is evaluated whole, each clip cloned from another
    of that speaker's clips, so the similarity figures say whether cloning carries over to new voices."""
    from conftest import scalars, tiny

    from dia_tpu.data.dataset import split_tables
    from dia_tpu.training.recipe import train

    run = tmp_path / "run"
    cfg = tiny(
        codes_dir,
        run,
        "train.max_steps=2",
        "eval.eval_every=2",
        "eval.audio.every=2",
        "eval.audio.limit=2",
        "eval.audio.max_seconds=1",
        "eval.audio.asr=none",
        "data.eval_speakers=[S2]",
        "data.prompt_pairs=0.5",
    )
    trained, held_out, _ = split_tables(cfg)
    assert set(trained["speaker"]) == {"S1"} and set(held_out["speaker"]) == {"S2"} and len(held_out) == 16
    train(cfg)
    rows = [json.loads(line) for line in (run / "evaluations/step_000002/rows.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == held_out["text"][:2]
    assert all("similarity_prompt" in r and "similarity_reference" in r for r in rows)
    assert {"audio/similarity_prompt", "audio/similarity_reference"} <= set(scalars(run))
    for speakers, message in (
        (["S3"], r"data.eval_speakers: \['S3'\] not among the speakers"),
        (["S1", "S2"], "leaves no training items"),
    ):
        cfg.data.eval_speakers = speakers
        with pytest.raises(ValueError, match=message):
            split_tables(cfg)


def test_processes_agree_on_best_by_wer_from_gathered_figures(codes_dir, tmp_path):
    """Two gloo processes with made-up per-process figures (tests/helpers/stub_audio_figures.py): the gathered
    WER picks best/ at step 2, where the loss would pick step 4, and both processes stop early at step 4."""
    import os
    import subprocess

    from conftest import TINY, scalars, two_process_launch

    run = tmp_path / "ddp"
    argv = [
        *two_process_launch(29561),
        str(ROOT / "tests/helpers/stub_audio_figures.py"),
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *TINY,
        f"data.dataset={codes_dir}",
        f"output.dir={run}",
        "train.max_steps=8",
        "eval.eval_every=2",
        "eval.audio.every=2",
        "eval.select_by=wer",
        "eval.early_stopping_patience=1",
        "train.save_every=100",
        "eval.audio.speaker=none",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "USE_TORCH_XLA": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "early stop at step 4: no eval.select_by (wer) improvement in 1 evaluations" in done.stdout, done.stdout
    state = json.loads((run / "best/train_state.json").read_text())
    assert state["step"] == 2 and state["best_score"] == pytest.approx(0.30)
    losses = dict(scalars(run)["eval/loss"])
    assert min(losses, key=losses.get) == 4  # what select_by=loss would have kept


def tiny_mos(folder, num_labels: int = 1):
    """A randomly initialised wav2vec 2.0 with a regression head, saved as a hub checkpoint is."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        num_labels=num_labels,
        classifier_proj_size=8,
    )
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)
    return folder


def test_a_mos_predictor_from_a_folder(tmp_path):
    from dia_tpu.evaluation.judge import Prompt, judge, summarise
    from dia_tpu.listen.judges import Judges
    from dia_tpu.listen.quality import load_quality_judge

    mos = load_quality_judge(f"mos:{tiny_mos(tmp_path / 'mos')}")
    assert mos.name.startswith(f"mos {tmp_path / 'mos'} (transformers ")
    clips = sample_clips(2)
    waves = [clips[0]["wave"], np.zeros(0, np.float32), clips[1]["wave"]]
    scores = mos.score(waves, 22050)
    assert scores[1] is None and all(isinstance(s, float) for s in scores[::2])
    assert mos.score(waves[:1], 22050) == [pytest.approx(scores[0])]
    # The two clips' scores differ far beyond approx's tolerance, so a score given to the wrong clip would fail.
    assert scores[0] != pytest.approx(scores[2], rel=0.01)
    rows = judge(
        [Prompt(str(i), c["text"]) for i, c in enumerate(clips)],
        waves[::2],
        [None, None],
        [True, True],
        22050,
        Judges(quality=mos),
    )
    assert [r.mos for r in rows] == pytest.approx(scores[::2])
    assert summarise(rows)["mos"] == pytest.approx(np.mean(scores[::2]))
    with pytest.raises(ValueError, match="it has 2 outputs; a MOS predictor has one"):
        load_quality_judge(f"mos:{tiny_mos(tmp_path / 'two', num_labels=2)}")
    with pytest.raises(ValueError, match="use mos:<hub id or folder>"):
        load_quality_judge("utmos")


def test_a_prompts_id_names_a_file_inside_the_output_only(tiny_run, tmp_path):
    from dia_tpu.evaluation.prompts import read_prompts
    from dia_tpu.evaluation.run import evaluate_models
    from dia_tpu.generation.synthesize import GenerationSettings
    from dia_tpu.listen.judges import Judges

    outside = tmp_path / "x"
    prompts = tmp_path / "prompts.jsonl"
    ids = ["../../ESCAPED", str(outside / "ABSOLUTE"), ".hidden"]
    prompts.write_text("".join(json.dumps({"id": i, "text": "[S1] Hi."}) + "\n" for i in ids))
    requests = read_prompts(prompts)
    assert [r.prompt.id for r in requests] == ["_.._ESCAPED", re.sub(r"[^\w.-]+", "_", f"{outside}/ABSOLUTE"), "hidden"]
    out = tmp_path / "deep" / "out"
    evaluate_models([str(tiny_run / "final")], requests, out, GenerationSettings(max_seconds=0.2), Judges())
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav"))
    assert written == sorted(f"deep/out/final/{r.prompt.id}.wav" for r in requests)
    assert not outside.exists()
    # An --out of someone's files is refused before any model is loaded.
    from dia_tpu.artifacts.owner import NotOurs

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "summary.md").write_text("my notes")
    with pytest.raises(NotOurs, match=r"--out .*/mine holds files dia_tpu did not write \(summary\.md\)"):
        evaluate_models(["no-such-model"], requests, tmp_path / "mine", GenerationSettings(), Judges())
    assert (tmp_path / "mine" / "summary.md").read_text() == "my notes"
    # Two ids that become one file name would overwrite each other's wav: refused, naming both lines.
    prompts.write_text(json.dumps({"id": "a b", "text": "x"}) + "\n" + json.dumps({"id": "a_b", "text": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl: ids 1 and 2 both give the file name 'a_b'"):
        read_prompts(prompts)


def test_evaluate_judges_a_dia2_model_beside_a_dia_one_as_generate_speaks_it(
    tiny_run, dia2_model, dia2_codes, tmp_path
):
    """A Dia2 model in `dia-tpu evaluate`: judged beside a Dia model on the same prompts, each utterance the one
    `dia-tpu generate` writes for its text and seed; on a prepared Dia2 dataset, its held-out items as references
    and each cloned from another item's first seconds."""
    from dia_tpu.cli import main

    lines = tmp_path / "prompts.txt"
    lines.write_text("[S1] hello there\n[S2] hi again friend\n")
    out = tmp_path / "out"
    flags = ["--max-seconds", "1", "--seed", "3", "--speaker", "none"]
    main(
        ["evaluate", "--model", str(tiny_run / "final"), "--model", str(dia2_model), "--prompts", str(lines)]
        + ["--out", str(out), *flags]
    )
    summaries = json.loads((out / "summary.json").read_text())["models"]
    assert list(summaries) == ["final", "model"] and all(s["utterances"] == 2 for s in summaries.values())
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    dia2_rows = [r for r in rows if r["model"] == "model"]
    assert [r["id"] for r in dia2_rows] == ["line_0001", "line_0002"]
    assert all(0 < r["seconds"] <= 1.0 and "wer" in r for r in dia2_rows)
    # Prompt 2 uses seed 3 + 1: `dia-tpu generate` with that seed writes the same audio.
    main(
        ["generate", "--model", str(dia2_model), "--text", "[S2] hi again friend", "--out", str(tmp_path / "g.wav")]
        + ["--max-seconds", "1", "--seed", "4"]
    )
    generated = sf.read(tmp_path / "g.wav")[0]
    assert np.array_equal(sf.read(out / "model/line_0002.wav")[0], generated)
    # Control: prompt 1's audio (another text and seed) is not it.
    first = sf.read(out / "model/line_0001.wav")[0]
    assert len(first) != len(generated) or not np.array_equal(first, generated)

    # --dataset: the held-out items of a prepared Dia2 dataset, their clips as references, cloned.
    main(
        ["evaluate", "--model", str(dia2_model), "--dataset", str(dia2_codes), "--limit", "3"]
        + ["--out", str(tmp_path / "held"), "--asr", "none", "--speaker", "resemblyzer", "--max-seconds", "2"]
    )
    held = [json.loads(line) for line in (tmp_path / "held/rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in held] == ["dialogue_000", "dialogue_001", "dialogue_002"]
    assert all(r["reference_seconds"] > 0 and r["similarity_reference"] is not None for r in held)
    assert sum(r.get("similarity_prompt") is not None for r in held) >= 2
