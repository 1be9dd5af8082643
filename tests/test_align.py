"""Forced alignment (`dia_tpu.listen.align`): every word of a transcript placed in its recording, on the bundled
espeak-ng sample and on speech whose word times are known (`scripts/aligner_accuracy.py` makes it)."""

from __future__ import annotations

import csv
import importlib.util
import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT

from dia_tpu.config import ConfigError, load
from dia_tpu.errors import UserError
from dia_tpu.listen.align import Unaligned, load_aligner, spoken_words
from dia_tpu.listen.ctc import ctc_path

SAMPLE = ROOT / "data/sample"


def accuracy_script():
    spec = importlib.util.spec_from_file_location("aligner_accuracy", ROOT / "scripts/aligner_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def known():
    """Four recordings spoken word by word without pauses, with noise (20 dB), and each word's true span."""
    script, rng = accuracy_script(), random.Random(0)
    rows = list(csv.DictReader((SAMPLE / "metadata.csv").open(), delimiter="|"))[:4]
    return [(spoken_words(r["text"]), *script.recording(spoken_words(r["text"]), rng, 0.0, 20.0)) for r in rows]


def start_errors(aligner, recordings, reorder=lambda words: words) -> list[float]:
    errors = []
    for words, wave, truth in recordings:
        timed = aligner.align(wave, 24000, reorder(words))
        errors += [abs(t.start - start) for t, (start, _) in zip(timed, truth, strict=True)]
    return errors


def test_spoken_words_are_the_transcript_without_tags_or_punctuation():
    assert spoken_words("[S1] Hello there, are you (laughs) ready? [S2] Yes! <break time=\"1s\"/>") == [
        "hello", "there", "are", "you", "ready", "yes",
    ]  # fmt: skip


def test_espeak_alignment_places_every_word_near_its_true_time(known):
    aligner = load_aligner("espeak")
    errors = start_errors(aligner, known)
    assert np.mean(errors) < 0.04, errors  # measured: 0.011 s; with the words reversed, 0.076 s
    # Control: the same audio aligned to its words in reverse order puts them far from their times.
    reversed_errors = start_errors(aligner, known, lambda words: words[::-1])
    assert np.mean(reversed_errors) > 0.04, np.mean(reversed_errors)


def test_every_word_of_the_bundled_clips_is_placed_in_order_inside_its_clip():
    aligner = load_aligner("espeak")
    for row in list(csv.DictReader((SAMPLE / "metadata.csv").open(), delimiter="|"))[:6]:
        wave, rate = sf.read(SAMPLE / row["file"], dtype="float32")
        words = spoken_words(row["text"])
        timed = aligner.align(wave, rate, words)
        assert [t.text for t in timed] == words
        assert all(0 <= t.start < t.end <= len(wave) / rate for t in timed)
        assert all(a.end <= b.start for a, b in zip(timed, timed[1:], strict=False)), timed


def test_pocketsphinx_agrees_with_espeak_where_it_aligns_and_names_what_it_cannot(known):
    sphinx, espeak = load_aligner("pocketsphinx"), load_aligner("espeak")
    wave, rate = sf.read(SAMPLE / "audio/utt_001.flac", dtype="float32")
    words = spoken_words("Yes, I have the map right here.")
    ours, theirs = sphinx.align(wave, rate, words), espeak.align(wave, rate, words)
    assert np.mean([abs(a.start - b.start) for a, b in zip(ours, theirs, strict=True)]) < 0.05
    with pytest.raises(Unaligned, match="not in pocketsphinx's dictionary: zqxv"):
        sphinx.align(wave, rate, ["yes", "zqxv"])


@pytest.mark.parametrize("spec", ["espeak", "pocketsphinx"])
def test_silence_is_not_aligned_and_says_why(spec):
    with pytest.raises(Unaligned, match="no speech"):
        load_aligner(spec).align(np.zeros(24000, np.float32), 24000, ["hello"])


def test_an_unknown_aligner_or_language_is_one_line():
    with pytest.raises(UserError, match="aligner 'mfa': use espeak, pocketsphinx, ctc or ctc:<hub id or folder>"):
        load_aligner("mfa")
    with pytest.raises(UserError, match="pocketsphinx: English only"):
        load_aligner("pocketsphinx", "de")
    assert load(ROOT / "configs/dia2-1b.yaml", ["prepare.aligner=ctc:facebook/mms-1b-all"]).prepare.aligner
    for bad in ("ctc-large", "whisper", "mfa"):
        with pytest.raises(ConfigError, match=f"prepare.aligner: '{bad}' is not espeak, pocketsphinx, none, ctc or"):
            load(ROOT / "configs/dia2-1b.yaml", [f"prepare.aligner={bad}"])


# ---- the CTC aligner


def emissions(tokens: str, vocabulary: str = "-ab|") -> torch.Tensor:
    """Log-probabilities of a frame a character, each frame sure (0.9) of its own: "-" is the blank."""
    probs = torch.full((len(tokens), len(vocabulary)), 0.1 / (len(vocabulary) - 1))
    for t, token in enumerate(tokens):
        probs[t, vocabulary.index(token)] = 0.9
    return probs.log()


def test_the_ctc_path_gives_each_letter_the_frames_it_is_heard_in():
    heard = emissions("--aaa-aa--|bbb---")
    # "a a | b": the repeated letter is two letters only with a blank between them.
    assert ctc_path(heard, torch.tensor([1, 1, 3, 2]), 0) == [(2, 5), (6, 8), (10, 11), (11, 14)]
    # One "a": it spans both runs (the frame between them taken as "a"), the letters after where they were.
    assert ctc_path(heard, torch.tensor([1, 3, 2]), 0) == [(2, 8), (10, 11), (11, 14)]
    # The order is the transcript's: "b" before "a" goes where it is least unlikely before the "a", not where "b"
    # is heard.
    (_, b_end), (a_start, _) = ctc_path(heard, torch.tensor([2, 1]), 0)
    assert b_end <= 2 and a_start == 2
    # "a a" with no blank heard between them: a frame of it becomes the blank the repeat needs.
    first, second = ctc_path(emissions("aaaa"), torch.tensor([1, 1]), 0)
    assert first[1] < second[0] and (first[0], second[1]) == (0, 4)
    # Three frames cannot hold "a a" and a blank between them and more.
    assert ctc_path(emissions("aaa"), torch.tensor([1, 1, 1]), 0) is None


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory):
    """A randomly initialised one-layer wav2vec2 CTC model spelling English in capitals, saved as the Hub's are."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = tmp_path_factory.mktemp("ctc")
    letters = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"))
    Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(), tokenizer=tokenizer).save_pretrained(out)
    config = Wav2Vec2Config(
        vocab_size=len(letters),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(out)
    return out


def test_the_ctc_aligner_places_every_word_of_a_clip_in_order_and_names_what_it_cannot_spell(tiny_ctc):
    aligner = load_aligner(f"ctc:{tiny_ctc}")
    assert aligner.name.startswith(f"ctc {tiny_ctc} (transformers ")
    wave, rate = sf.read(SAMPLE / "audio/utt_002.flac", dtype="float32")
    words = spoken_words("[S1] Great. Where should we camp this weekend?")
    timed = aligner.align(wave, rate, words)
    assert [t.text for t in timed] == words
    edges = [x for t in timed for x in (t.start, t.end)]
    assert edges == sorted(edges) and edges[0] >= 0 and edges[-1] <= len(wave) / rate
    assert all(t.end > t.start for t in timed)
    with pytest.raises(Unaligned, match="no letter of '42' in the ctc model's alphabet"):
        aligner.align(wave, rate, ["hello", "42"])
    with pytest.raises(Unaligned, match="more letters than the ctc model's frames"):
        aligner.align(wave[: rate // 10], rate, words)
