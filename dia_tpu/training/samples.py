"""Audio samples during training: the configured prompts, generated at an interval, written and logged.

Files: `output.dir/samples/step_N/{name}.wav`, `{name}.png` (spectrogram) and `index.json` (what each
sample is), which `dia-tpu report` reads. Trackers get the audio and the spectrogram image.

Every process calls `TrainingSamples.write`; only the main process generates and writes, and all of them
meet at one barrier afterwards. Generation uses the live model (mode restored, dtype untouched) except on
XLA and under FSDP, where it runs on a CPU copy of the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from accelerate import Accelerator

from dia_tpu.artifacts import SAMPLES_INDEX, RunFolder
from dia_tpu.config import Config
from dia_tpu.errors import UserError
from dia_tpu.evaluation.judge import Prompt
from dia_tpu.evaluation.prompts import Request
from dia_tpu.evaluation.speech import Speech, speech_for
from dia_tpu.model.adapters import dia_of, is_peft, merged_state_dict
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.sharding import whole_weights


class TrainingSamples:
    """The sample prompts of a run, checked against the model before the first step."""

    def __init__(self, accelerator: Accelerator, runtime: Runtime, cfg: Config, family: str, model_config):
        s = cfg.samples
        self.accelerator, self.cfg = accelerator, cfg
        self.enabled = s.every > 0 and not (runtime.on_xla and s.on_xla == "skip")
        self.generator = LiveGenerator(accelerator, runtime)
        self.speech: Speech | None = None
        if not self.enabled or not accelerator.is_main_process:
            return
        self.speech = speech_for(family, cfg, model_config, self.generator.device)
        self.settings = self.speech.settings(s, s.max_seconds)
        self.prompts = {}
        for prompt in s.prompts:
            request = Request(Prompt(prompt.name, prompt.text), audio=prompt.audio, transcript=prompt.transcript)
            try:
                self.prompts[prompt.name] = loaded = self.speech.load(request)
                self.speech.check(*loaded, self.settings)
            except ValueError as err:
                raise UserError(f"samples.prompts {prompt.name!r}: {err}") from err

    def due(self, step: int, last: bool) -> bool:
        return self.enabled and (step % self.cfg.samples.every == 0 or last)

    def write(self, model, step: int) -> Path | None:
        """Generate every prompt on the main process; returns its folder there (None elsewhere)."""
        generator = self.generator.get(model, self.speech)
        out = self._generate_all(generator, step) if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return out

    def _generate_all(self, model: torch.nn.Module, step: int) -> Path:
        folder = RunFolder(self.cfg.output.dir).samples_at(step)
        folder.mkdir(parents=True, exist_ok=True)
        rate = self.speech.rate
        index = []
        for prompt in self.cfg.samples.prompts:
            wave, _, _ = self.speech.generate(model, *self.prompts[prompt.name], self.settings, prompt.seed)
            sf.write(folder / f"{prompt.name}.wav", wave, rate)
            image = spectrogram_image(wave, rate)
            _save_png(folder / f"{prompt.name}.png", image)
            self._log(prompt.name, prompt.text, wave, rate, image, step)
            index.append(
                {
                    "name": prompt.name,
                    "text": prompt.text,
                    "audio_prompt": prompt.audio,
                    "transcript": prompt.transcript,
                    "seed": prompt.seed,
                    "seconds": round(len(wave) / rate, 3),
                    "step": step,
                }
            )
        (folder / SAMPLES_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return folder

    def _log(self, name: str, text: str, wave: np.ndarray, rate: int, image: np.ndarray, step: int) -> None:
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                if len(wave):  # a model may end the audio at once; TensorBoard cannot hold an empty clip
                    tracker.writer.add_audio(f"samples/{name}", torch.from_numpy(wave)[None], step, sample_rate=rate)
                tracker.writer.add_image(f"spectrograms/{name}", image, step, dataformats="HWC")
                tracker.writer.add_text(f"samples/{name}", text, step)
                tracker.writer.flush()
            elif tracker.name == "wandb":
                import wandb

                values = {f"spectrograms/{name}": wandb.Image(image, caption=text)}
                if len(wave):
                    values[f"samples/{name}"] = wandb.Audio(wave, sample_rate=rate, caption=text)
                tracker.log(values, step=step)


class LiveGenerator:
    """The model to generate with during training. The live one (unwrapped, adapters active) on every process, or
    where its weights cannot generate in place, a CPU copy on the main process only (None elsewhere): XLA would
    compile every step of the decode loop, and FSDP holds only a shard of the weights on each process."""

    def __init__(self, accelerator: Accelerator, runtime: Runtime):
        self.accelerator, self.runtime = accelerator, runtime
        self.copy_weights = runtime.on_xla or runtime.fsdp
        # Where generation (and so the codec and the judges) runs.
        self.device = torch.device("cpu") if self.copy_weights else accelerator.device
        self._cpu_model: torch.nn.Module | None = None

    def get(self, model, speech: Speech | None) -> torch.nn.Module | None:
        """Every process calls this at the same step (under FSDP gathering the weights is a collective); one that
        does not generate gives no `speech`."""
        accelerator = self.accelerator
        state = whole_weights(accelerator, self.runtime, model)
        unwrapped = accelerator.unwrap_model(model)
        live = dia_of(unwrapped)  # any family's PeftModel gives its base, the adapters on
        if speech is None or (self.copy_weights and not accelerator.is_main_process):
            return None
        if not self.copy_weights:
            return live
        if self._cpu_model is None:
            self._cpu_model = speech.blank(live)
        if is_peft(unwrapped):
            state = merged_state_dict(unwrapped)
        weights = state if state is not None else live.state_dict()
        self._cpu_model.load_state_dict({k: v.detach().cpu().float() for k, v in weights.items()})
        return self._cpu_model


def spectrogram_image(wave: np.ndarray, rate: int, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-magnitude spectrogram as an RGB uint8 image [freq (high at the top), time, 3], 80 dB range; a
    stereo wave [samples, 2] is shown as its mid (left + right) / 2."""
    import matplotlib

    if wave.ndim == 2:
        wave = wave.mean(axis=1)

    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-10))
    db = np.clip(db, db.max() - 80, None)
    scaled = (db - db.min()) / max(float(db.max() - db.min()), 1e-6)
    rgb = matplotlib.colormaps["magma"](scaled.T[::-1])[..., :3]
    return (rgb * 255).astype(np.uint8)


def _save_png(path: Path, image: np.ndarray) -> None:
    import matplotlib.image

    matplotlib.image.imsave(path, image)
