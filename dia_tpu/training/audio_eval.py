"""eval.audio: generated speech judged during training, after the loss evaluation of its steps, and the score
that best/ and early stopping follow (`eval.select_by`, weighed by `dia_tpu.evaluation.selection`).

The prompts (the eval split's items, or a prompts file) are dealt out across processes: each generates its
share with the live model (generation runs no collective) and judges it. On XLA and under FSDP the main
process generates them all from the CPU copy the samples use, and the others judge nothing. Each process
sums its figures (`dia_tpu.evaluation.judge.SUMS`: word and character errors, similarities, counts); one
all-reduce gives every process the same totals, so every process takes the same best-checkpoint and
early-stopping decisions. The rows of the main process's share go to `output.dir/evaluations/step_N/rows.jsonl`
with its wavs, for the report.
"""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
import torch
from accelerate import Accelerator

from dia_tpu.artifacts import RunFolder
from dia_tpu.config import Config
from dia_tpu.data.dataset import Splits
from dia_tpu.errors import UserError
from dia_tpu.evaluation.judge import Row, Sums, judge
from dia_tpu.evaluation.prompts import chars_per_second, held_out_requests, read_prompts, with_pace
from dia_tpu.evaluation.speech import speak_each, speech_for
from dia_tpu.listen.judges import Judges
from dia_tpu.training.runtime import Runtime
from dia_tpu.training.samples import LiveGenerator


class AudioEvaluation:
    def __init__(
        self, accelerator: Accelerator, runtime: Runtime, cfg: Config, splits: Splits, family: str, model_config
    ):
        a = cfg.eval.audio
        self.accelerator, self.cfg = accelerator, cfg
        self.enabled = a.every > 0
        if not self.enabled:
            return
        self.generator = LiveGenerator(accelerator, runtime)
        self.speech = speech_for(family, cfg, model_config, self.generator.device)
        # Expected lengths at the pace of the training data's speakers.
        pace = chars_per_second(splits.train.table.with_format(None))
        if a.prompts is not None:
            requests = with_pace(read_prompts(a.prompts)[: a.limit], pace)
        else:
            requests = held_out_requests(splits.eval.table, pace, self.speech.frame_rate, a.limit, a.clone)
        n, rank = accelerator.num_processes, accelerator.process_index
        if self.generator.copy_weights:
            self.mine = list(range(len(requests))) if accelerator.is_main_process else []
        else:
            self.mine = list(range(rank, len(requests), n))
        self.prompts = [self.speech.load(requests[i]) for i in self.mine]
        self.settings = self.speech.settings(cfg.samples, a.max_seconds)
        # A prompt that does not fit the model at all is an error now, not after the first evaluation's steps;
        # generation shortens the limit of one whose voice leaves less room than max_seconds.
        unlimited = self.speech.settings(cfg.samples, None)
        for index, (prompt, voice) in zip(self.mine, self.prompts, strict=True):
            try:
                self.speech.check(prompt, voice, unlimited)
            except ValueError as err:
                raise UserError(f"eval.audio prompt {index + 1} ({prompt.id}): {err}") from err
        self.judges: Judges | None = None

    def due(self, step: int, last: bool) -> bool:
        return self.enabled and (step % self.cfg.eval.audio.every == 0 or last)

    def run(self, model, step: int) -> dict[str, float]:
        """Judge this process's share and gather everyone's: the same figures on every process."""
        generator = self.generator.get(model, self.speech)
        rows = self._judge(generator, step) if self.prompts and generator is not None else []
        local = torch.tensor(Sums.of(rows).values(), dtype=torch.float32, device=self.accelerator.device)
        totals = Sums.from_values(self.accelerator.reduce(local, "sum").cpu().tolist())
        return {f"audio/{k}": v for k, v in totals.figures().items()}

    def _judge(self, generator, step: int) -> list[Row]:
        if self.judges is None:
            a = self.cfg.eval.audio
            # Where generation runs: the accelerator, or the host beside the CPU copy (XLA, FSDP).
            self.judges = Judges.load(a.asr, a.speaker, a.quality, self.generator.device, a.language)
        # Prompt i of the whole list keeps seed + i whichever process generates it.
        seeds = [self.cfg.eval.audio.seed + index for index in self.mine]
        waves, codes, ended = speak_each(self.speech, generator, self.prompts, self.settings, seeds)
        rate = self.speech.rate
        rows = judge([p for p, _ in self.prompts], waves, codes, ended, rate, self.judges)
        if self.accelerator.is_main_process:
            self._write(rows, waves, step, rate)
        return rows

    def _write(self, rows: list[Row], waves: list[np.ndarray], step: int, rate: int) -> None:
        folder = RunFolder(self.cfg.output.dir).evaluations_at(step)
        folder.mkdir(parents=True, exist_ok=True)
        for row, wave in zip(rows, waves, strict=True):
            sf.write(folder / f"{row.id}.wav", wave, rate)
        with open(folder / "rows.jsonl", "w") as f:
            f.writelines(json.dumps({"step": step, **row.to_dict()}) + "\n" for row in rows)
