"""Generation: per-item seeded sampling that leaves the rest of the process alone, voice prompts, limits, CLI."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, tiny_dia_config
from transformers import DacConfig, DacModel, DiaForConditionalGeneration

import dia_tpu.generation.synthesize as synthesis
from dia_tpu.cli import main
from dia_tpu.config import load
from dia_tpu.data.tokens import encode_text
from dia_tpu.generation.decode import generate_delayed, processors_beyond_dia
from dia_tpu.generation.sampling import SeededSampler
from dia_tpu.generation.speak import check_flags, read_scripts
from dia_tpu.generation.synthesize import (
    GenerationSettings,
    VoicePrompt,
    check_request,
    load_voice_prompt,
    synthesize,
    synthesize_codes,
)
from dia_tpu.model.attention import STATIC_ATTENTION
from dia_tpu.model.load import language_tags_of
from dia_tpu.training.samples import spectrogram_image

RATE = 44100 / 512  # frames per second of the 44.1 kHz DAC
SHORT = dict(max_seconds=0.3, guidance_scale=3.0)


@pytest.fixture(scope="module")
def codec() -> DacModel:
    torch.manual_seed(0)
    return DacModel(DacConfig(encoder_hidden_size=8, decoder_hidden_size=32, sampling_rate=44100)).eval()


@pytest.fixture
def training_mode(tiny_dia):
    """The shared tiny model in training mode, as the live model is when samples are taken; restored after."""
    tiny_dia.train()
    yield tiny_dia
    tiny_dia.eval()


def test_sampling_is_seeded_per_item_and_leaves_the_process_alone(training_mode):
    model = training_mode
    texts = ["[S1] Hello there.", "[S2] Hi!"]
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}

    batch = synthesize_codes(model, texts, GenerationSettings(seed=5, **SHORT), RATE)
    again = synthesize_codes(model, texts, GenerationSettings(seed=5, **SHORT), RATE)
    alone = synthesize_codes(model, texts[1:], GenerationSettings(seed=6, **SHORT), RATE)
    other = synthesize_codes(model, texts[1:], GenerationSettings(seed=7, **SHORT), RATE)

    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True))
    # Item i uses seed + i whatever batch it runs in; another seed gives other audio.
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(alone[0], other[0])
    # The global RNG, the model's mode, dtype and weights are as they were.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, weights_before[key]), key


def test_sampling_at_a_tiny_temperature_is_greedy(tiny_dia):
    texts = ["[S1] Hello there.", "[S2] Hi!"]
    greedy = synthesize_codes(tiny_dia, texts, GenerationSettings(greedy=True, **SHORT), RATE)
    cold = synthesize_codes(tiny_dia, texts, GenerationSettings(temperature=1e-8, **SHORT), RATE)
    assert all(torch.equal(a, b) for a, b in zip(greedy, cold, strict=True))
    assert all(len(codes) == round(0.3 * RATE) for codes in greedy)  # a random model never says EOS


def test_compiled_decoding_gives_the_eager_tokens(tiny_dia):
    """A static cache and transformers' compiled step (`--compile`) change how, not what: greedy and seeded
    sampling pick the same codes as eager decoding."""
    from torch._dynamo.utils import counters

    texts = ["[S1] Hello there.", "[S2] Hi!"]
    graphs = counters["stats"]["unique_graphs"]
    for settings in (dict(greedy=True), dict(seed=3)):
        eager = synthesize_codes(tiny_dia, texts, GenerationSettings(**settings, **SHORT), RATE)
        compiled = synthesize_codes(tiny_dia, texts, GenerationSettings(decoding="compiled", **settings, **SHORT), RATE)
        assert all(torch.equal(a, b) for a, b in zip(eager, compiled, strict=True)), settings
    assert counters["stats"]["unique_graphs"] > graphs  # it was compiled


@pytest.fixture
def delayed_sequences(monkeypatch) -> list[torch.Tensor]:
    """Every raw [B, T, C] delayed sequence a decoding loop hands back, before the delay is undone and the
    items are cut at their EOS: what transformers' generate returns, padding and forced EOS included."""
    seen, undo = [], synthesis.undelay_and_trim

    def keep(sequences, *args, **kwargs):
        seen.append(sequences.clone())
        return undo(sequences, *args, **kwargs)

    monkeypatch.setattr(synthesis, "undelay_and_trim", keep)
    return seen


def test_dia_tpu_decoding_writes_generates_tokens(delayed_sequences, monkeypatch):
    """dia_tpu's own loop (the default) and transformers' generate give the same delayed sequences, token for
    token: greedy and seeded, with and without guidance, continuing a voice prompt, with a batch's items ending
    at different steps (EOS chosen, or forced at the length limit), under SDPA, eager and XLA's static-mask eager
    attention, and with the end looked for only every few steps, as on GPUs."""
    torch.manual_seed(0)
    model = DiaForConditionalGeneration(tiny_dia_config()).eval()
    channels = len(model.config.delay_pattern)
    head = model.logits_dense.weight.view(channels, model.config.decoder_config.vocab_size, -1)
    eos = model.config.decoder_config.eos_token_id
    with torch.no_grad():
        head[0, eos] += 1.5 * head.std()  # channel 0 now ends the audio now and then, at different steps
    prompt = VoicePrompt(codes=torch.randint(0, eos, (12, channels)), transcript="[S1] Before.")
    texts = ["[S1] Hello there.", "[S2] Hi! How are you doing today?", "[S1] Fine."]
    cases = [
        (GenerationSettings(greedy=True, max_seconds=0.5), None),
        (GenerationSettings(greedy=True, guidance_scale=1.0, max_seconds=0.5), None),
        (GenerationSettings(greedy=True, max_seconds=0.4), prompt),
    ]
    cases += [(GenerationSettings(seed=seed, max_seconds=0.5), voice) for seed in range(3) for voice in (None, prompt)]
    # The whole vocabulary in play, so draws reach the tokens the EOS rules keep out.
    cases += [(GenerationSettings(seed=seed, top_p=1.0, max_seconds=0.5), None) for seed in range(3)]
    ends = set()
    for attention in ("sdpa", "eager", STATIC_ATTENTION):
        model.set_attn_implementation(attention)
        for settings, voice in cases:
            for decoding in ("transformers", "dia_tpu"):
                synthesize_codes(model, texts, replace(settings, decoding=decoding), RATE, voice)
            with monkeypatch.context() as patch:
                patch.setattr(synthesis, "generate_delayed", functools.partial(generate_delayed, check_every=5))
                synthesize_codes(model, texts, settings, RATE, voice)
            theirs, ours, late = delayed_sequences[-3:]
            assert theirs.shape == ours.shape and torch.equal(theirs, ours), (attention, settings, voice is not None)
            assert torch.equal(late, ours)
            ends |= {int((item[:, 0] == eos).nonzero()[0]) for item in ours}  # chosen, or forced at the limit
    assert len(ends) > 6


def test_a_generation_config_beyond_dias_processors_decodes_with_generate(delayed_sequences):
    """A checkpoint whose generation config adds a logits processor (a repetition penalty) gets generate's
    tokens from the default decoding: dia_tpu's loop does not apply it, so generate runs instead."""
    torch.manual_seed(0)
    model = DiaForConditionalGeneration(tiny_dia_config()).eval()
    model.generation_config.repetition_penalty = 5.0
    assert processors_beyond_dia(model, 3.0, 45) == ["RepetitionPenaltyLogitsProcessor"]
    settings = GenerationSettings(greedy=True, max_seconds=0.5)
    for decoding in ("transformers", "dia_tpu"):
        synthesize_codes(model, ["[S1] Hello there."], replace(settings, decoding=decoding), RATE)
    theirs, ours = delayed_sequences
    assert torch.equal(theirs, ours)
    # Without the penalty the tokens differ, so the loop alone would not have matched.
    model.generation_config.repetition_penalty = 1.0
    synthesize_codes(model, ["[S1] Hello there."], settings, RATE)
    assert not torch.equal(delayed_sequences[-1], ours)


def test_sampler_keeps_to_top_k_and_top_p():
    vocab, channels = 8, 2
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005])
    scores = probs.log().repeat(channels, 1)  # one item, two channels

    def draws(**settings) -> set[int]:
        sampler = SeededSampler([0], channels, GenerationSettings(temperature=1.0, **settings))
        picked = set()
        for _ in range(200):
            out = sampler(None, scores.clone())
            assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == channels * (vocab - 1)
            picked |= set(out.argmax(-1).tolist())
        return picked

    assert draws(top_k=2, top_p=1.0) == {0, 1}
    assert draws(top_k=8, top_p=0.75) == {0, 1}  # 0.5 alone is short of 0.75; 0.5 + 0.3 reaches it
    assert draws(top_k=8, top_p=0.4) == {0}
    assert len(draws(top_k=8, top_p=1.0)) > 4


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampler_draws_in_proportion_to_the_probabilities(temperature):
    """Each token is drawn as often as its probability after temperature, top-k and top-p says; a row with one
    finite score (EOS forced by Dia's rules) always gives that token."""
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05, 0.0])

    def kept(temperature: float) -> torch.Tensor:  # top-4; top-p keeps them all
        tempered = probs[:4] ** (1 / temperature)
        return (tempered / tempered.sum()).double()

    rows = 40_000  # one item with many channels: 40,000 draws in one call
    scores = probs.log().repeat(rows, 1)
    scores[0] = torch.tensor([-float("inf")] * 5 + [0.0])
    sampler = SeededSampler([0], rows, GenerationSettings(temperature=temperature, top_k=4, top_p=0.95))
    picked = sampler(None, scores).argmax(-1)
    assert picked[0] == 5
    seen = torch.bincount(picked[1:], minlength=6).double() / (rows - 1)
    assert seen[4:].sum() == 0
    assert torch.allclose(seen[:4], kept(temperature), atol=0.01), (seen, kept(temperature))
    # The other temperature's frequencies are 0.13 away: a sampler that ignored the temperature would fail.
    other = {1.0: 2.0, 2.0: 1.0}[temperature]
    assert not torch.allclose(seen[:4], kept(other), atol=0.01)


def test_voice_prompt_continues_and_is_not_returned(tiny_dia):
    prompt = VoicePrompt(
        codes=torch.randint(0, 1024, (12, 9), generator=torch.Generator().manual_seed(0)),
        transcript="[S1] This is how I sound.",
    )
    seen = {}

    def capture(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    hook = tiny_dia.model.encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        [codes] = synthesize_codes(
            tiny_dia, ["[S2] And this is me."], GenerationSettings(greedy=True, **SHORT), RATE, prompt
        )
    finally:
        hook.remove()
    # The encoder reads the transcript, then the text; the unconditional half is all zeros.
    assert seen["ids"][0].tolist() == encode_text("[S1] This is how I sound. [S2] And this is me.")
    assert not seen["ids"][1].any()
    # Only new frames come back (this random model happens to end early; test_agreement checks lengths).
    assert 0 < len(codes) <= round(0.3 * RATE)


def test_a_model_that_ends_at_once_gives_empty_audio(tiny_dia, codec):
    def eos_first(module, args, output):  # channel 0's EOS logit far above everything else
        output = output.clone()
        output[..., 1024] = 1e4
        return output

    hook = tiny_dia.logits_dense.register_forward_hook(eos_first)
    try:
        [wave] = synthesize(tiny_dia, codec, ["[S1] Bye."], GenerationSettings(greedy=True, **SHORT))
    finally:
        hook.remove()
    assert wave.shape == (0,) and wave.dtype == np.float32
    assert spectrogram_image(wave, 44100).shape[2] == 3  # the sample writer draws it without failing


def test_the_runs_language_tags_are_read_as_trained(tiny_dia, tmp_path):
    cfg = load(ROOT / "configs/demo.yaml", ["data.language_tags={de: 3}"])
    tiny_dia.save_pretrained(tmp_path)
    cfg.save(tmp_path / "config.yaml")
    tags = language_tags_of(str(tmp_path))
    assert tags == {"de": 3} and language_tags_of("nari-labs/Dia-1.6B-0626") == {}
    seen = {}

    def capture(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    hook = tiny_dia.model.encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        synthesize_codes(tiny_dia, ["[de] Hallo."], GenerationSettings(greedy=True, language_tags=tags, **SHORT), RATE)
    finally:
        hook.remove()
    assert seen["ids"][0].tolist() == [3, *b" Hallo."]


def test_requests_that_do_not_fit_name_the_limit(tiny_dia):
    config = tiny_dia.config
    limit = config.encoder_config.max_position_embeddings
    with pytest.raises(ValueError, match=f"text length of {limit}"):
        check_request(config, ["[S1] " + "a" * limit], GenerationSettings(), RATE)
    with pytest.raises(ValueError, match="empty text"):
        check_request(config, [""], GenerationSettings(), RATE)
    room = config.decoder_config.max_position_embeddings - 2 - max(config.delay_pattern)
    with pytest.raises(ValueError, match="max_seconds=1000"):
        check_request(config, ["[S1] Hi."], GenerationSettings(max_seconds=1000), RATE)
    long = VoicePrompt(codes=torch.zeros((room, 9), dtype=torch.long), transcript="[S1] Hi.", source="long.wav")
    with pytest.raises(ValueError, match=r"long.wav is .* too long"):
        check_request(config, ["[S1] Hi."], GenerationSettings(), RATE, long)
    wrong = VoicePrompt(codes=torch.zeros((5, 4), dtype=torch.long), transcript="[S1] Hi.", source="x.npy")
    with pytest.raises(ValueError, match=r"x.npy: expected codes of shape \[frames, 9\]"):
        check_request(config, ["[S1] Hi."], GenerationSettings(), RATE, wrong)
    with pytest.raises(ValueError, match="decoding 'fast': choose one of dia_tpu, transformers, compiled"):
        check_request(config, ["[S1] Hi."], GenerationSettings(decoding="fast"), RATE)
    assert check_request(config, ["[S1] Hi."], GenerationSettings(), RATE) == room


def test_voice_prompt_audio_is_resampled_to_the_codec_rate(codec, tmp_path):
    t = np.arange(44100) / 44100
    wave = (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(tmp_path / "native.wav", wave, 44100)
    sf.write(tmp_path / "low.flac", wave[::2], 22050)
    stereo = np.stack([wave, wave], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 44100)
    native = load_voice_prompt(codec, tmp_path / "native.wav", "[S1] Ah.")
    low = load_voice_prompt(codec, tmp_path / "low.flac", "[S1] Ah.")
    both = load_voice_prompt(codec, tmp_path / "stereo.wav", "[S1] Ah.")
    # 86 frames, less the few at the end that the codec encoded without the sound after the cut.
    assert all(44100 // 512 - 8 <= len(p.codes) < 44100 // 512 and p.codes.shape[1] == 9 for p in (native, low, both))
    assert torch.equal(native.codes, both.codes)
    with pytest.raises(ValueError, match="native.wav: its transcript is empty"):
        load_voice_prompt(codec, tmp_path / "native.wav", " ")
    with pytest.raises(ValueError, match="missing.wav"):
        load_voice_prompt(codec, tmp_path / "missing.wav", "[S1] Ah.")


def test_a_voice_prompt_far_too_long_is_refused_from_its_header(codec, tmp_path, monkeypatch):
    config = tiny_dia_config()
    sf.write(tmp_path / "long.wav", np.zeros(120 * 8000, dtype=np.float32), 8000)  # two minutes of silence
    decoded = []
    monkeypatch.setattr(synthesis, "load_channels", lambda *args: decoded.append(args) or [np.zeros(4096, np.float32)])
    with pytest.raises(
        ValueError,
        match=r"long\.wav is 120\.0 s, too long for the model's decoder \(3072 positions\): "
        r"keep the prompt well under 35\.5 s",
    ):
        load_voice_prompt(codec, tmp_path / "long.wav", "[S1] Hi.", model_config=config)
    assert decoded == []  # refused from the header: nothing decoded, nothing encoded
    sf.write(tmp_path / "short.wav", np.zeros(8000, dtype=np.float32), 8000)
    load_voice_prompt(codec, tmp_path / "short.wav", "[S1] Hi.", model_config=config)
    assert len(decoded) == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dia_tpu", "generate", *args], capture_output=True, text=True, timeout=300
    )


def _refused(*args: str) -> str:
    """`dia-tpu generate` run in this process, expected to stop with a one-line error: the error."""
    with pytest.raises(SystemExit) as stop:
        main(["generate", *args])
    assert isinstance(stop.value.code, str) and "\n" not in stop.value.code, stop.value.code
    return stop.value.code


def test_generate_cli_text_file_voice_prompt_and_batching(tiny_dia, codec, tmp_path):
    # In this process (test_train.py runs `generate` as its own process): what a user sees is the same.
    model_dir = tmp_path / "model"
    tiny_dia.save_pretrained(model_dir)
    codec.save_pretrained(model_dir / "codec")
    lines = tmp_path / "lines.txt"
    lines.write_text("[S1] One.\n\n[S2] Two, a bit longer.\n[S1] Three!\n")
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "voice.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 22050)
    common = ["--model", str(model_dir), "--text-file", str(lines), "--max-seconds", "0.2", "--seed", "3"]
    voice = ["--audio-prompt", str(tmp_path / "voice.wav"), "--prompt-transcript", "[S1] Hm."]

    main(["generate", *common, *voice, "--out", str(tmp_path / "one"), "--batch-size", "1"])
    main(
        ["generate", *common, *voice, "--out", str(tmp_path / "two"), "--batch-size", "2", "--decoding", "transformers"]
    )
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["line_0001.wav", "line_0002.wav", "line_0003.wav"]
    for name in names:
        a, rate = sf.read(tmp_path / "one" / name)
        b, _ = sf.read(tmp_path / "two" / name)
        assert rate == 44100 and 0 < len(a) <= round(0.2 * RATE) * 512 and len(a) % 512 == 0
        assert np.array_equal(a, b), name  # line i uses seed + i, whatever the batch size and decoding loop

    missing = _refused("--model", str(tmp_path / "nope"), "--text", "[S1] Hi.", "--out", str(tmp_path / "x.wav"))
    assert "model not found" in missing and "nope" in missing
    alone = _refused(*common, "--out", str(tmp_path / "x"), "--audio-prompt", str(tmp_path / "voice.wav"))
    assert "--prompt-transcript" in alone
    too_long = _refused("--model", str(model_dir), "--text", "[S1] " + "x" * 2000, "--out", str(tmp_path / "y.wav"))
    assert "exceeds the model's text length" in too_long
    assert not Path(tmp_path / "y.wav").exists()


def test_generate_flags_out_of_range_are_one_line_naming_each_flag(tmp_path):
    bad = _cli(
        "--model",
        str(tmp_path / "never_loaded"),
        "--text",
        "[S1] Hi.",
        "--out",
        str(tmp_path / "x.wav"),
        "--max-seconds",
        "inf",
        "--temperature",
        "0",
        "--batch-size",
        "0",
    )
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1, bad.stderr[-2000:]
    for flag in (
        "--max-seconds must be a number of seconds > 0",
        "--temperature must be a number > 0",
        "--batch-size must be >= 1",
    ):
        assert flag in lines[0]


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(max_seconds=-5.0), "--max-seconds must be"),
        (dict(guidance_scale=0.5), "--guidance-scale must be a number >= 1"),
        (dict(top_p=1.5), "--top-p must be in (0, 1]"),
        (dict(top_k=0), "--top-k must be >= 1"),
        (dict(temperature=float("nan")), "--temperature must be"),
    ],
)
def test_generate_settings_are_checked_before_loading(settings, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_flags(GenerationSettings(**settings), batch_size=1)


def test_a_folder_given_as_text_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="--text-file .* is a folder"):
        read_scripts(tmp_path)
