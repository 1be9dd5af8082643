"""Training targets and generation agree: a model overfit on a few clips generates those clips back.

The tiny model is trained through the real `train()` on a dataset made by the real `prepare()`, exported,
loaded back as a user would, and decoded greedily with `synthesize_codes`. If BOS, EOS, padding or the
delay were placed differently in training than generation expects, the codes would not come back, or
would come back at the wrong length. It runs twice: on tones through the random codec, and on the bundled
speech through the demo codec, where the generated codes must also decode to speech the recogniser hears.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import RANDOM_CODEC, ROOT, TINY
from datasets import load_from_disk

from dia_tpu.config import load
from dia_tpu.data.audio import decode
from dia_tpu.data.prepare import prepare
from dia_tpu.evaluation.text import char_errors, spoken_text
from dia_tpu.generation.synthesize import GenerationSettings, VoicePrompt, load_voice_prompt, synthesize_codes
from dia_tpu.listen.asr import load_recogniser
from dia_tpu.model.load import load_for_inference
from dia_tpu.training.recipe import train

SCRIPTS = [
    "[S1] Good morning.",
    "[S2] Pass the salt, please.",
    "[S1] We leave at dawn. [S2] Fine.",
    "[S2] Where is the tent?",
]
GREEDY = GenerationSettings(greedy=True, guidance_scale=1.0)
# Pooled character error rate of the recogniser on the demo codec's decoding of the four speech clips'
# generated codes: measured with the shipped codec, with margin. Noise or silence scores 1.0 or more.
MAX_SPEECH_CER = 0.60  # measured: 0.37 (41 of 111 characters)


def _tones(source: Path) -> int:
    """Four short tones in noise, each with a script: written as a source folder; returns the frames to pad to."""
    rng = np.random.default_rng(7)
    lines = ["file|text"]
    for i, script in enumerate(SCRIPTS):
        seconds = 0.25 + 0.1 * i
        t = np.arange(int(44100 * seconds)) / 44100
        wave = 0.3 * np.sin(2 * np.pi * (180 + 60 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(source / "audio" / f"clip_{i}.wav", wave.astype(np.float32), 44100)
        lines.append(f"audio/clip_{i}.wav|{script}")
    (source / "metadata.csv").write_text("\n".join(lines) + "\n")
    return 64


def _speech(source: Path) -> int:
    """The bundled sample's four shortest clips as a source folder; returns the frames to pad to."""
    sample = ROOT / "data/sample"
    rows = list(csv.DictReader(open(sample / "metadata.csv"), delimiter="|"))
    rows = sorted(rows, key=lambda row: sf.info(sample / row["file"]).duration)[:4]
    for row in rows:
        shutil.copy(sample / row["file"], source / row["file"])
    (source / "metadata.csv").write_text("file|text\n" + "".join(f"{r['file']}|{r['text']}\n" for r in rows))
    return 176


@pytest.fixture(scope="module", params=["tones", "speech"])
def overfit(request, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], str]:
    """A tiny model trained to memorise four short clips (tones through the random codec, or speech through
    the demo codec); returns its export, the clips' codes by text, and which of the two it is."""
    root = tmp_path_factory.mktemp(f"overfit-{request.param}")
    source = root / "source"
    (source / "audio").mkdir(parents=True)
    frames = (_tones if request.param == "tones" else _speech)(source)
    # The speech clips keep the demo config's codec; the tones take the random one.
    tiny = TINY if request.param == "tones" else [o for o in TINY if o not in RANDOM_CODEC]
    cfg = load(
        ROOT / "configs/demo.yaml",
        [
            *tiny,
            f"data.dataset={root / 'codes'}",
            f"output.dir={root / 'run'}",
            "data.eval_size=0",
            "data.random_crop=false",
            f"data.max_audio_frames={frames}",
            "data.max_text_tokens=48",
            "train.unconditional_frac=0.0",
            "train.batch_size=4",
            # Speech through the demo codec takes 300 steps to memorise (at 150 its clips come out wrong); tones 150.
            f"train.max_steps={150 if request.param == 'tones' else 300}",
            "train.learning_rate=3e-3",
            "train.warmup_steps=10",
            "train.save_every=1000",
            "train.report_to=none",
        ],
    )
    prepare(cfg, source, cfg.data.dataset)
    final = train(cfg)
    table = load_from_disk(cfg.data.dataset)
    codes = {row["text"]: torch.tensor(np.asarray(row["codes"]), dtype=torch.long) for row in table}
    return final, codes, request.param


def _agreement(generated: torch.Tensor, expected: torch.Tensor) -> float:
    """Fraction of the expected frames reproduced exactly in all channels."""
    n = min(len(generated), len(expected))
    return float((generated[:n] == expected[:n]).all(-1).float().sum() / len(expected))


def test_overfit_model_generates_its_training_clips(overfit):
    final, codes, _ = overfit
    model, codec = load_for_inference(str(final))
    rate = codec.config.sampling_rate / codec.config.hop_length
    # Greedy, then sampling through the seeded sampler at a low temperature: the memorised clips are the
    # only likely continuations, so both must find them, in one batch of differently long texts.
    scripts = list(codes)
    # A clip one frame early or late, or another clip, agrees on a fifth of the frames at most: 0.95 below sees a
    # misplaced BOS or delay, or the wrong clip.
    for script, expected in codes.items():
        late = torch.cat([expected[:1], expected])
        assert max(_agreement(expected[1:], expected), _agreement(late, expected)) < 0.5, script
        assert all(_agreement(codes[other], expected) < 0.5 for other in scripts if other != script), script
    for settings in (GREEDY, GenerationSettings(guidance_scale=1.0, temperature=0.3, seed=11)):
        generated = synthesize_codes(model, scripts, settings, rate)
        for script, got in zip(scripts, generated, strict=True):
            expected = codes[script]
            assert len(got) == len(expected), f"{script!r}: EOS after {len(got)} frames, the clip has {len(expected)}"
            assert _agreement(got, expected) >= 0.95, (script, settings)


def test_overfit_model_continues_a_voice_prompt(overfit):
    final, codes, _ = overfit
    model, codec = load_for_inference(str(final))
    rate = codec.config.sampling_rate / codec.config.hop_length
    for script in codes:
        expected = codes[script]
        half = len(expected) // 2
        prompt = VoicePrompt(codes=expected[:half], transcript=script)
        got = synthesize_codes(model, [""], GREEDY, rate, prompt)[0]
        assert len(got) == len(expected) - half, script
        assert _agreement(got, expected[half:]) >= 0.95, script
        # Going on from one frame too early (the prompt's last frame again) would agree on a third at most.
        assert _agreement(expected[half - 1 :], expected[half:]) < 0.5, script


def test_overfit_model_continues_the_first_half_of_a_clips_audio(overfit, tmp_path):
    """Voice cloning from audio, as `generate --audio-prompt` does it: the clip's first half cut out as a file,
    read and encoded. The prompt's last frames, encoded without the sound after the cut, are dropped, so what
    the model continues are codes it was trained on."""
    final, codes, _ = overfit
    model, codec = load_for_inference(str(final))
    rate = codec.config.sampling_rate / codec.config.hop_length
    source = final.parent.parent / "source"
    files = dict(line.split("|")[::-1] for line in (source / "metadata.csv").read_text().splitlines()[1:])
    for script, expected in codes.items():
        wave, sr = sf.read(source / files[script], dtype="float32")
        sf.write(tmp_path / "half.wav", wave[: len(wave) // 2], sr)
        prompt = load_voice_prompt(codec, tmp_path / "half.wav", script)
        kept = len(prompt.codes)
        assert len(expected) // 2 - 8 <= kept < len(expected) // 2 + 1, script
        assert torch.equal(prompt.codes, expected[:kept]), script
        got = synthesize_codes(model, [""], GREEDY, rate, prompt)[0]
        assert len(got) == len(expected) - kept, script
        assert _agreement(got, expected[kept:]) >= 0.95, script
        # Going on from one frame too early (the prompt's last frame again) would agree on a third at most.
        assert _agreement(expected[kept - 1 :], expected[kept:]) < 0.5, script


def test_overfit_speech_decodes_to_recognisable_speech(overfit):
    final, codes, kind = overfit
    if kind != "speech":
        pytest.skip("tones: nothing to recognise")
    model, codec = load_for_inference(str(final))
    scripts = list(codes)
    rate = codec.config.sampling_rate
    generated = synthesize_codes(model, scripts, GREEDY, rate / codec.config.hop_length)
    waves = [decode(codec, got) for got in generated]
    recogniser = load_recogniser("pocketsphinx")
    transcripts = recogniser.transcribe(waves, rate)
    errors = chars = 0
    for script, heard in zip(scripts, transcripts, strict=True):
        said = char_errors(recogniser.normalise(spoken_text(script)), recogniser.normalise(heard))
        errors, chars = errors + said.errors, chars + said.length
    assert errors / chars <= MAX_SPEECH_CER, (errors, chars)
    # The same transcripts held against the next clip's script score above the limit: it tells the memorised
    # words from other speech.
    wrong = [
        char_errors(recogniser.normalise(spoken_text(script)), recogniser.normalise(heard))
        for script, heard in zip(scripts[1:] + scripts[:1], transcripts, strict=True)
    ]
    assert sum(w.errors for w in wrong) / sum(w.length for w in wrong) > MAX_SPEECH_CER, (wrong, transcripts)


def test_a_model_trained_on_prompt_pairs_continues_the_prompt_into_the_text(tmp_path):
    """data.prompt_pairs: each tone clip is trained after the other clip of its speaker as a voice prompt, with
    loss on its own frames only; then generation given that clip as the prompt produces the trained one."""
    source = tmp_path / "source"
    (source / "audio").mkdir(parents=True)
    _tones(source)
    lines = (source / "metadata.csv").read_text().splitlines()
    speakers = ["A", "B", "A", "B"]
    (source / "metadata.csv").write_text(
        "file|text|speaker\n"
        + "".join(f"{line}|{speaker}\n" for line, speaker in zip(lines[1:], speakers, strict=True))
    )
    cfg = load(
        ROOT / "configs/demo.yaml",
        [
            *TINY,
            f"data.dataset={tmp_path / 'codes'}",
            f"output.dir={tmp_path / 'run'}",
            "data.eval_size=0",
            "data.random_crop=false",
            "data.max_audio_frames=100",
            "data.prompt_pairs=1.0",
            "data.prompt_max_frames=50",
            "data.max_text_tokens=64",
            "train.unconditional_frac=0.0",
            "train.batch_size=4",
            "train.max_steps=150",
            "train.learning_rate=3e-3",
            "train.warmup_steps=10",
            "train.save_every=1000",
            "train.report_to=none",
        ],
    )
    prepare(cfg, source, cfg.data.dataset)
    final = train(cfg)
    rows = list(load_from_disk(cfg.data.dataset))
    model, codec = load_for_inference(str(final))
    rate = codec.config.sampling_rate / codec.config.hop_length
    for i, row in enumerate(rows):
        partner = rows[(i + 2) % 4]  # the other clip of the same speaker
        expected = torch.tensor(np.asarray(row["codes"]), dtype=torch.long)
        prompt = VoicePrompt(codes=torch.tensor(np.asarray(partner["codes"])), transcript=partner["text"])
        got = synthesize_codes(model, [row["text"]], GREEDY, rate, prompt)[0]
        assert len(got) == len(expected), f"{row['text']!r}: EOS after {len(got)} frames, the clip has {len(expected)}"
        assert _agreement(got, expected) >= 0.95, row["text"]
        # Speaking the prompt's own clip again would agree on almost nothing.
        assert _agreement(prompt.codes, expected) < 0.5, row["text"]
