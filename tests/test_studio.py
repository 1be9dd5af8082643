"""`dia-tpu studio` served for real on a free local port and used through headless Chromium: one generation
from the page equals `dia-tpu generate`'s with the same seed, an over-long script shows its error in the page,
and nothing is requested from anywhere but the studio itself."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
import soundfile as sf
from conftest import reset_accelerate, tiny
from helpers.browser import Browser

from dia_tpu.generation.synthesize import GenerationSettings
from dia_tpu.training.recipe import train

pytest.importorskip("gradio", reason="gradio is missing: pip install 'dia-tpu[studio]'")

SCRIPT = "[S1] Ready to plan the trip?"
SECONDS = 0.4
FILL = """(() => {
  const set = (selector, value) => {
    const field = document.querySelector(selector);
    field.value = value;
    field.dispatchEvent(new Event('input', {bubbles: true}));
    field.dispatchEvent(new Event('change', {bubbles: true}));
  };
  set('#script textarea', %r);
  set('#max-seconds input', %r);
  document.querySelector('#generate').click();
})()"""
LINK = "document.querySelector('#speech a[data-testid=\"download-link\"]')?.href"
DURATION = """(async () => {
  const audio = new Audio(%r);
  await new Promise((ok, bad) => { audio.onloadedmetadata = ok; audio.onerror = () => bad(audio.error.code); });
  return audio.duration;
})()"""


@pytest.fixture(scope="module")
def run(codes_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("studio") / "run"
    train(tiny(codes_dir, run_dir, "train.max_steps=2", "train.save_every=1", "data.eval_size=0",
               "train.report_to=none"))  # fmt: skip
    reset_accelerate()
    return run_dir


@pytest.fixture(scope="module")
def studio(run):
    """The studio's URL, serving the run (its checkpoints and final/ to pick from) on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "dia_tpu", "studio", "--run", str(run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urlopen(url, timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the studio did not answer in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def test_a_generation_in_the_page_is_dia_tpu_generates(run, studio, tmp_path):
    with Browser(tmp_path / "profile") as browser:
        browser.open(studio)
        browser.wait_until("!!document.querySelector('#script textarea') && !!document.querySelector('#generate')", 60)
        browser.evaluate(FILL % (SCRIPT, str(SECONDS)))
        link = browser.wait_until(LINK, 120)
        duration = browser.evaluate(DURATION % link)
        outside = [u for u in browser.requested() if not u.startswith((studio, "blob:", "data:"))]

    with urlopen(link, timeout=30) as response:
        page_wave, rate = sf.read(io.BytesIO(response.read()), dtype="float32")
    out = tmp_path / "cli.wav"
    done = subprocess.run([sys.executable, "-m", "dia_tpu", "generate", "--model", str(run / "final"), "--text",
                           SCRIPT, "--out", str(out), "--max-seconds", str(SECONDS), "--seed", "0"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    cli_wave, cli_rate = sf.read(out, dtype="float32")
    assert rate == cli_rate == 44100
    assert duration == pytest.approx(len(cli_wave) / rate, abs=0.01) and len(cli_wave) > 0
    # Both are 16-bit wav files of the same samples (each library rounds to 16 bits its own way).
    np.testing.assert_allclose(page_wave, cli_wave, atol=2 / 32768)
    assert outside == []


def test_an_over_long_script_shows_its_error_in_the_page(studio, tmp_path):
    with Browser(tmp_path / "profile") as browser:
        browser.open(studio)
        browser.wait_until("!!document.querySelector('#script textarea') && !!document.querySelector('#generate')", 60)
        browser.evaluate(FILL % ("[S1] " + "words " * 400, ""))
        shown = browser.wait_until(
            "document.body.innerText.includes(\"exceeds the model's text length\") && document.body.innerText", 120
        )
        # The page is still alive: the script box is still there to be fixed.
        assert browser.evaluate("!!document.querySelector('#script textarea')")
    assert "byte tokens exceeds the model's text length of" in shown


def test_a_runs_models_are_offered_with_what_was_logged_of_them(run):
    from dia_tpu.studio import evaluation_figures, run_models

    offered = run_models(run)
    assert [Path(p).name for p in offered] == ["step_1", "step_2", "final"]
    assert evaluation_figures(offered[1]) == "step 2: nothing logged at this step"
    assert evaluation_figures(offered[-1]) == ""  # an export is no checkpoint of the run


def test_compare_plays_each_checkpoint_on_the_same_seed(run, studio):
    from gradio_client import Client

    client = Client(studio, verbose=False)
    first, second = (str(run / "checkpoints" / name) for name in ("step_1", "step_2"))
    *players, note_1, note_2, _, _ = client.predict([first, second, first], SCRIPT, 0, SECONDS, api_name="/compare")
    waves = [sf.read(player["value"])[0] for player in players[:3]]
    assert [player["label"] for player in players] == ["step_1", "step_2", "step_1", "-"]
    np.testing.assert_array_equal(waves[0], waves[2])  # the same model and seed: the same audio
    assert len(waves[1]) == round(SECONDS * 44100 / 512) * 512 and players[3]["value"] is None
    assert note_1.endswith("step 1: nothing logged at this step") and "step 2" in note_2
    with pytest.raises(Exception, match="pick two to four models to compare, not 1"):
        client.predict([first], SCRIPT, 0, None, api_name="/compare")


def test_a_voice_prompt_is_cloned_as_dia_tpu_generate_clones_it(run):
    from dia_tpu.generation.speak import write_speech
    from dia_tpu.studio import Models, speak

    prompt = str(Path(__file__).resolve().parents[1] / "data/sample/prompts/utt_000_hello_there.flac")
    models = Models("cpu")
    rate, wave = speak(models, str(run / "final"), None, SCRIPT, prompt, "[S1] Hello there.", 3.0, 1.8, 0.9, 45, 7,
                       SECONDS)  # fmt: skip
    out = run.parent / "cloned.wav"
    write_speech(str(run / "final"), [SCRIPT], [out], GenerationSettings(seed=7, max_seconds=SECONDS),
                 audio_prompt=prompt, prompt_transcript="[S1] Hello there.")  # fmt: skip
    expected, _ = sf.read(out, dtype="int16")
    np.testing.assert_allclose(wave, expected, atol=1)
    assert models.get(str(run / "final")) is models.get(str(run / "final"))  # loaded once
    with pytest.raises(ValueError, match="its transcript is empty"):
        speak(models, str(run / "final"), None, SCRIPT, prompt, "", 3.0, 1.8, 0.9, 45, 7, SECONDS)
