"""The quick version of scripts/chaos_resume.py: SIGKILL at a random moment and inside a save, and a run killed
half-way through a mirror upload whose machine then vanishes; each resumes with `--resume auto` and ends with
the uninterrupted run's weights."""

from __future__ import annotations

import importlib.util
import random
import time

from conftest import ROOT


def test_killed_runs_resume_to_the_same_weights(codes_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("chaos_resume", ROOT / "scripts/chaos_resume.py")
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    reference, steps = tmp_path / "reference", 16
    started = time.monotonic()
    chaos.finish(chaos.command(codes_dir, reference, steps, resume=False))
    budget = time.monotonic() - started
    # The random kill strikes within the first half of an uninterrupted run's time, so it always lands before the
    # run ends; the second kill waits for a save to start. A trial that killed nothing would prove nothing.
    passed, story = chaos.trial(codes_dir, reference, tmp_path / "trial", steps, 2, random.Random(0), budget / 2)
    assert passed, story
    landed = story.removesuffix(" -> identical").split("; ")
    assert len(landed) == 2 and "finished before the kill" not in story, story
    assert landed[1].startswith("inside the save of step_"), story
    passed, story = chaos.stage_trial(codes_dir, reference, tmp_path / "vanished", steps, "mirror upload", 6)
    assert passed, story
    assert (tmp_path / "vanished.log").read_text().count("chaos: SIGKILL at mirror upload") == 1
    assert "mirror: fetched checkpoints/step_" in (tmp_path / "vanished.log").read_text()
