"""A hub id that cannot be reached: every command that takes one stops with one line naming it and saying how
to use a local copy, instead of transformers' or datasets' traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

DEMO = str(ROOT / "configs/demo.yaml")
MODEL = "nari-labs/Dia-1.6B-0626"


def commands(tmp_path, codes_dir) -> dict[str, tuple[list[str], str, str]]:
    """Each command with a hub id it needs, the id its error must name and the setting that takes a folder."""
    return {
        "plan": (["plan", "--config", str(ROOT / "configs/dia-1.6b.yaml")], MODEL, "model.pretrained"),
        "train": (
            [
                "train",
                "--config",
                DEMO,
                f"data.dataset={codes_dir}",
                f"model.pretrained={MODEL}",
                f"output.dir={tmp_path / 'run'}",
            ],
            MODEL,
            "model.pretrained",
        ),
        "generate": (
            ["generate", "--model", MODEL, "--text", "[S1] Hi.", "--out", str(tmp_path / "hi.wav")],
            MODEL,
            "--model",
        ),
        "prepare codec": (
            ["prepare", "--config", DEMO, "--output", str(tmp_path / "a"), "model.codec=descript/dac_44khz"],
            "descript/dac_44khz",
            "model.codec",
        ),
        "prepare source": (
            ["prepare", "--config", DEMO, "--input", "someone/their-voices", "--output", str(tmp_path / "b")],
            "someone/their-voices",
            "--input",
        ),
    }


def test_an_unreachable_hub_id_is_one_line_in_every_command(tmp_path, codes_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_cache")}
    cases = commands(tmp_path, codes_dir)
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "dia_tpu", *argv],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, (argv, _, _) in cases.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert process.returncode == 1, f"{name}: exit {process.returncode}\n{err[-3000:]}"
        assert len(lines) == 1, f"{name}: expected one line, got:\n{err[-3000:]}"
        _, hub_id, setting = cases[name]
        assert lines[0].startswith(f"dia-tpu {name.split()[0]}: error: {setting}"), f"{name}: {lines[0]}"
        assert f"{hub_id!r} is not in the local Hugging Face cache and the Hub cannot be reached" in lines[0], lines[0]
        assert f"hf download {hub_id}" in lines[0] and "--local-dir DIR" in lines[0], f"{name}: {lines[0]}"
        assert "Traceback" not in out + err
