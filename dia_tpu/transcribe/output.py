"""What a transcribe output holds besides its segments: metadata.csv, dropped.tsv and report.json, assembled from
the finished recordings' work files, and the one way its files are written (whole, by a rename)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from dia_tpu.config import Config
from dia_tpu.data.sources import METADATA_FILE
from dia_tpu.transcribe.speakers import name_voices

WORK = ".work"
STAGES = ("vad", "speaker_embedding", "clustering", "recogniser")
COLUMNS = ("file", "text", "speaker", "source", "start", "end")


def assemble(output: Path, recordings: list[str], settings: str, cfg: Config) -> dict:
    """metadata.csv, dropped.tsv and report.json from every finished recording (by name, in order), each written
    whole."""
    work = output / WORK
    items = [json.loads((work / f"{name}.json").read_text()) for name in recordings]
    names = name_voices({item["name"]: np.array(item["centroids"]) for item in items}, cfg.transcribe.match_voices)
    lines, dropped = ["|".join(COLUMNS)], ["source\tstart\tend\treason\ttext"]
    reasons: Counter = Counter()
    kept_seconds = 0.0
    for item in items:
        if item["problem"]:
            dropped.append(f"{item['source']}\t0\t{item['seconds']:.3f}\t{item['problem']}\t")
            reasons[item["problem"].split(":")[0]] += 1
        for row in item["kept"]:
            voices = "+".join(names[item["name"]][k] for k in row["speakers"])
            lines.append(
                "|".join([row["file"], row["text"], voices, item["source"], f"{row['start']:.3f}", f"{row['end']:.3f}"])
            )
            kept_seconds += row["end"] - row["start"]
        for row in item["dropped"]:
            dropped.append(f"{item['source']}\t{row['start']:.3f}\t{row['end']:.3f}\t{row['reason']}\t{row['text']}")
            reasons[row["reason"].split(" (")[0]] += 1
    seconds = sum(item["seconds"] for item in items)
    timings = {stage: sum(item["timings"][stage] for item in items) for stage in STAGES}
    report = {
        "recordings": len(items),
        "hours": round(seconds / 3600, 4),
        "kept_hours": round(kept_seconds / 3600, 4),
        "segments": len(lines) - 1,
        "segments_with_word_times": sum(row.get("timed", False) for item in items for row in item["kept"]),
        "dropped": dict(reasons.most_common()),
        "speakers": {item["source"]: len(item["centroids"]) for item in items},
        "seconds": {stage: round(v, 2) for stage, v in timings.items()},
        "real_time_factor": {
            stage: round(v / max(seconds, 1e-9), 4) for stage, v in {**timings, "total": sum(timings.values())}.items()
        },
        "judges": next((item["judges"] for item in items), {}),
        "settings": json.loads(settings),
    }
    write_whole(output / METADATA_FILE, "\n".join(lines) + "\n")
    write_whole(output / "dropped.tsv", "\n".join(dropped) + "\n")
    write_whole(output / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def write_whole(path: Path, text: str) -> None:
    """`text` into `path` by a rename: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
