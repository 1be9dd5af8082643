"""`dia-tpu check` of a prepared Dia2 dataset: what will train badly, found before training, as Dia's check finds
it (`dia_tpu.data.check`), for codes and timed words:
- data that does not fit the model: another codebook count, no frame rate, a frame limit beyond its context;
- word timings that do not fit their recordings (training refuses those at its start);
- recordings longer than `data.max_audio_frames`: cut there, the words after the cut never trained;
- words that start before the word before them has been fed (one token a frame): training feeds them late,
  so the text runs behind the audio there;
- speakers with less audio than `min_speaker_seconds`.
"""

from __future__ import annotations

from datasets import load_from_disk

from dia_tpu.config import Config
from dia_tpu.data.check import Finding, speaker_findings
from dia_tpu.data.shards import read_prepare_info
from dia_tpu.families.dia2.assets import load_tokenizer
from dia_tpu.families.dia2.config import Dia2Config, read_config
from dia_tpu.families.dia2.data import WORDS_COLUMN, tagged_words, timing_problems
from dia_tpu.families.dia2.script import timed_entries
from dia_tpu.families.dia2.source import source_config, source_folder


def config_problems(cfg: Config, info: dict, config: Dia2Config) -> list[str]:
    """Where the prepared data (its manifest `info`) and the config's limits do not fit the Dia2 model."""
    problems = []
    if info.get("num_codebooks") != config.codebooks:
        problems.append(
            f"{cfg.data.dataset} holds {info.get('num_codebooks')} codebooks a frame; the Dia2 model reads "
            f"{config.codebooks} (prepare it with the model's Mimi codebook count)"
        )
    if not info.get("frame_rate"):
        problems.append(f"{cfg.data.dataset}: its manifest gives no frame_rate, which word timings are read at")
    longest = cfg.data.max_audio_frames + max(config.delays)
    if longest > config.max_context:
        problems.append(
            f"data.max_audio_frames={cfg.data.max_audio_frames} makes {longest} frames with the delays; the "
            f"model's context is {config.max_context} (runtime.max_context_steps)"
        )
    return problems


def check_dataset(cfg: Config, min_speaker_seconds: float = 60.0) -> tuple[int, list[Finding]]:
    """The number of recordings in `data.dataset`, and every finding about them under `cfg`."""
    d = cfg.data
    info = read_prepare_info(d.dataset)  # not a prepared dataset: a clear error
    table = load_from_disk(d.dataset)
    config = read_config(source_config(cfg.model.pretrained))
    findings = [
        Finding(p, "prepare again with the model's Mimi, or fix the limits") for p in config_problems(cfg, info, config)
    ]
    ids, frames = table["source_id"], table["frames"]
    if WORDS_COLUMN not in table.column_names:
        findings.append(Finding("the rows hold no word timings (a 'words' column)", "prepare it for Dia2"))
        return len(ids), findings
    words = table[WORDS_COLUMN]
    if problems := timing_problems(words, frames, ids):
        findings.append(
            Finding(
                f"{len(problems)} recordings have word timings that do not fit them (training refuses them)",
                "prepare them again, or fix their timings",
                problems,
            )
        )
        return len(ids), findings
    cut = [i for i, n in enumerate(frames) if n > d.max_audio_frames]
    if cut:
        findings.append(
            Finding(
                f"{len(cut)} of {len(frames)} recordings are longer than data.max_audio_frames={d.max_audio_frames} "
                "and are cut there: their words after the cut are never trained",
                "raise data.max_audio_frames, or prepare with a lower prepare.max_seconds so long recordings are split",
                [f"{ids[i]} ({frames[i]} frames)" for i in cut],
            )
        )
    if late := _late_words(cfg, config, words, info, ids):
        findings.append(late)
    findings += speaker_findings(table["speaker"], table["duration"], min_speaker_seconds)
    return len(ids), findings


def _late_words(cfg: Config, config: Dia2Config, words, info: dict, ids) -> Finding | None:
    """Words said before the word before them has been fed (the model reads a word's tokens one a frame)."""
    tokenizer = load_tokenizer(source_folder(cfg.model.pretrained), config)
    tokenize = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    rate = float(info["frame_rate"])
    late, latest, examples = 0, 0, []
    for said, source in zip(words, ids, strict=True):
        if not said:
            continue
        _, starts = timed_entries(tagged_words(said, rate), tokenize, None, rate)
        shifts = [start + 1 - int(word["start"]) for start, word in zip(starts, said, strict=True)]
        if any(shift > 0 for shift in shifts):
            late += sum(shift > 0 for shift in shifts)
            latest = max(latest, *shifts)
            examples.append(source)
    if not late:
        return None
    return Finding(
        f"{late} words start before the word before them has been fed (one token a frame), up to {latest} frames "
        "late in training: the text runs behind the audio there",
        "check those timings (words said that fast are rare), or accept it",
        examples,
    )
