"""`dia-tpu studio` served for real on a free local port and used through headless Chromium: one generation
from the page equals `dia-tpu generate`'s with the same seed, an over-long script shows its error in the page,
and nothing is requested from anywhere but the studio itself. Over HTTP: a model not offered is refused in the same
words whether or not such a path exists, and an upload over --max-upload-mb is refused."""

from __future__ import annotations

import io
import json
import os
import shutil
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
MB = 1024 * 1024
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
    train(
        tiny(codes_dir, run_dir, "train.max_steps=2", "train.save_every=1", "data.eval_size=0", "train.report_to=none")
    )
    reset_accelerate()
    return run_dir


@pytest.fixture(scope="module")
def studio(run):
    """The studio's URL, serving the run (its checkpoints and final/ to pick from) on a free port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A 1 MiB upload limit: the upload test then needs only a 2 MiB file.
    command = [sys.executable, "-m", "dia_tpu", "studio", "--run", str(run), "--port", str(port), "--max-upload-mb=1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dia_tpu",
            "generate",
            "--model",
            str(run / "final"),
            "--text",
            SCRIPT,
            "--out",
            str(out),
            "--max-seconds",
            str(SECONDS),
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
            'document.body.innerText.includes("exceeds the model\'s text length") && document.body.innerText', 120
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


def test_a_voice_prompt_is_cloned_as_dia_tpu_generate_clones_it(run, studio):
    from gradio_client import Client, handle_file

    from dia_tpu.generation.speak import write_speech
    from dia_tpu.studio import Models, Offer, speak

    prompt = str(Path(__file__).resolve().parents[1] / "data/sample/prompts/utt_000_hello_there.flac")
    models = Models("cpu", Offer((str(run / "final"),)))
    # No sampling given: the model's own (the run's samples.*), as generate's without flags.
    rate, wave, used = speak(
        models, str(run / "final"), None, SCRIPT, prompt, "[S1] Hello there.", None, None, None, None, 7, SECONDS
    )
    assert used == {"guidance_scale": 1.0, "temperature": 0.7, "top_p": 0.9, "top_k": 45, "greedy": False, "seed": 7}
    out = run.parent / "cloned.wav"
    write_speech(
        str(run / "final"),
        [SCRIPT],
        [out],
        GenerationSettings(seed=7, max_seconds=SECONDS),
        audio_prompt=prompt,
        prompt_transcript="[S1] Hello there.",
    )
    expected, _ = sf.read(out, dtype="int16")
    np.testing.assert_allclose(wave, expected, atol=1)
    assert models.get(str(run / "final")) is models.get(str(run / "final"))  # loaded once
    # The same through the studio: the prompt uploaded (under its limit), generated by the server.
    served = Client(studio, verbose=False).predict(
        str(run / "final"),
        "none",
        SCRIPT,
        handle_file(prompt),
        "[S1] Hello there.",
        1.0,
        0.7,
        0.9,
        45,
        7,
        SECONDS,
        api_name="/generate",
    )
    np.testing.assert_array_equal(sf.read(served, dtype="int16")[0], wave)
    assert json.loads(sf.SoundFile(served).comment) == {"dia_tpu_sampling": used}  # the download keeps it
    with pytest.raises(ValueError, match="its transcript is empty"):
        speak(models, str(run / "final"), None, SCRIPT, prompt, "", None, None, None, None, 7, SECONDS)


def test_a_model_not_offered_is_refused_alike_whether_or_not_it_exists(run, studio, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(studio, verbose=False)
    final, missing = str(run / "final"), str(tmp_path / "missing")

    def refused(model: str, adapter: str = "none", api_name: str = "/generate") -> str:
        if api_name == "/compare":
            args = ([model, final], SCRIPT, 0, SECONDS)
        else:
            args = (model, adapter, SCRIPT, None, "", 3.0, 1.8, 0.9, 45, 0, SECONDS)
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        return str(caught.value)

    etc = refused("/etc")
    assert etc == '"/etc" is not one of the models this studio offers; start it with --model /etc to offer it'
    assert refused(missing).replace(missing, "/etc") == etc
    assert refused("/etc", api_name="/compare") == etc
    assert refused("nari-labs/Dia-1.6B-0626").startswith('"nari-labs/Dia-1.6B-0626" is not one of the models')
    adapter = refused(final, "/etc")
    assert adapter == '"/etc" is not one of the adapters this studio offers; start it with --adapter /etc to offer it'
    assert refused(final, missing).replace(missing, "/etc") == adapter


def test_an_upload_over_the_limit_is_refused(studio):
    import httpx

    def upload(size: int) -> httpx.Response:
        return httpx.post(f"{studio}gradio_api/upload", files={"files": ("voice.wav", b"\0" * size)}, timeout=30)

    over = upload(2 * MB)  # the fixture's studio takes 1 MiB
    assert over.status_code == 413 and "maximum allowed size of 1048576 bytes" in over.text
    under = upload(MB // 2)
    assert under.status_code == 200 and len(under.json()) == 1


def test_a_checkpoint_is_offered_while_it_is_in_the_run(run, tmp_path):
    from dia_tpu.studio import Offer

    offer, saved = Offer(run_dir=str(tmp_path)), tmp_path / "checkpoints" / "step_1"
    with pytest.raises(ValueError, match="is not one of the models this studio offers"):
        offer.model(str(saved))
    shutil.copytree(run / "checkpoints" / "step_1", saved, copy_function=os.link)  # saved while the studio runs
    assert offer.model(str(saved)) == str(saved)
    shutil.rmtree(saved)  # rotated away
    with pytest.raises(ValueError, match="is not one of the models this studio offers"):
        offer.model(str(saved))


def test_the_loaded_models_are_bounded_least_recently_used_first():
    from dia_tpu.studio import Models, Offer

    loads = []

    def load(source: str, adapter: str | None, device: str) -> tuple:
        loads.append((source, adapter))
        return (source, adapter, device)

    models = Models("cpu", Offer(("a", "b", "c"), adapters=("lora",)), limit=2, load=load)
    assert models.get("a") == ("a", None, "cpu")
    models.get("b")
    models.get("a")  # used again: now b is the least recently used
    models.get("c")
    assert loads == [("a", None), ("b", None), ("c", None)]  # a was kept, not loaded again
    assert models.loaded() == [("a", None), ("c", None)]
    models.get("a", "lora")  # another adapter is another model: a without it, used before c, goes
    assert models.loaded() == [("c", None), ("a", "lora")] and len(loads) == 4
    with pytest.raises(ValueError, match='"d" is not one of the models'):
        models.get("d")
    assert len(loads) == 4
