"""`dia-tpu transcribe`: long recordings in, a folder `dia-tpu prepare` reads as it is out.

For each recording: voice activity (Silero VAD) finds the speech, a speaker encoder embeds it and the
embeddings are clustered into the recording's speakers, a recogniser transcribes each stretch, and
stretches are grouped into segments of at most `prepare.max_seconds`, cut in pauses, whose text reads
`[S1] ... [S2] ...` turn by turn. Filters drop what would teach the model wrong things, each with a reason.

OUTPUT/
  metadata.csv   file|text|speaker|source|start|end: one kept segment a line (speaker: its voices in tag
                 order, joined by +)
  audio/<recording>/<recording>_NNNN.flac   the segments, mono, at the recording's own rate
  audio/<recording>/<recording>_NNNN.json   each word's time in its segment and its speaker, where the recogniser
                 gives word times (moshi-finetune's {"alignments": [[word, [start, end], "S1"], ...]}): prepare
                 reads them for Dia2 instead of aligning the text
  dropped.tsv    source, start, end, reason and text of everything left out
  report.json    hours in and kept, reasons, speakers per recording, seconds and real-time factor per stage
  .work/         one finished recording a file: a re-run skips every recording finished with the same
                 settings, and `accelerate launch -m dia_tpu transcribe ...` shares recordings between processes
  .dia_tpu.json  marks the folder as transcribe's: it writes only into a new or empty folder or its own
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm import tqdm

from dia_tpu.artifacts.owner import TRANSCRIPTION, check_replaceable, claim
from dia_tpu.config import Config
from dia_tpu.data.clips import walk_files
from dia_tpu.data.sources import AUDIO_EXTENSIONS, METADATA_FILE
from dia_tpu.listen.asr import load_recogniser, to_16k
from dia_tpu.listen.judges import Judges
from dia_tpu.listen.speaker import load_speaker_encoder
from dia_tpu.transcribe.diarize import Diarizer
from dia_tpu.transcribe.output import STAGES, WORK, assemble, write_whole
from dia_tpu.transcribe.regions import RATE, Region, Segment, group, speech_regions
from dia_tpu.transcribe.speakers import (
    assign_from_turns,
    assign_speakers,
    dialogue_text,
    embed_regions,
)
from dia_tpu.transcribe.spoken import spoken
from dia_tpu.transcribe.words import alignments, recognised_words

# A stretch of at least this long in which the recogniser heard no words: the text would miss speech.
WORDLESS = 1.0


@dataclass
class Recording:
    path: Path
    name: str  # unique, file-system safe: the output's folder and file prefix
    source: str  # as the user named it, for the metadata and the report

    def key(self, settings: str) -> str:
        stat = self.path.stat()
        identity = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{settings}"
        return hashlib.sha256(identity.encode()).hexdigest()


def find_recordings(inputs: list[str]) -> list[Recording]:
    """Audio files named or found under the folders named, in order; names made unique."""
    found: list[Recording] = []
    for given in inputs:
        path = Path(given)
        if path.is_file():
            found.append(Recording(path, _safe(path.stem), str(path)))
        elif path.is_dir():
            files = sorted(
                (f for f in walk_files(path) if f.suffix.lower() in AUDIO_EXTENSIONS),
                key=lambda f: f.relative_to(path).parts,
            )
            if not files:
                raise FileNotFoundError(f"{given}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under it")
            found += [Recording(f, _safe(f.relative_to(path).with_suffix("").as_posix()), str(f)) for f in files]
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
    names = Counter(r.name for r in found)
    seen: Counter = Counter()
    for recording in found:
        if names[recording.name] > 1:
            seen[recording.name] += 1
            recording.name = f"{recording.name}-{seen[recording.name]}"
    return found


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__"))


def transcribe(cfg: Config, inputs: list[str], output: str | Path) -> dict:
    """Transcribe `inputs` into `output` (resuming what an earlier run finished); returns the report."""
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    output = Path(output)
    # Re-runs replace the segments and files written here: only a new or empty folder, or transcribe's own.
    check_replaceable(output, TRANSCRIPTION, "--output", earlier=_earlier_output)
    # An output folder inside an input folder: its own segments are not recordings.
    recordings = [r for r in find_recordings(inputs) if not r.path.resolve().is_relative_to(output.resolve())]
    settings = json.dumps({**asdict(cfg.transcribe), "max_seconds": cfg.prepare.max_seconds}, sort_keys=True)
    work = output / WORK
    # Every process has looked at the folder before the main one marks it: a mark half written is no mark.
    state.wait_for_everyone()
    if state.is_main_process:
        claim(output, TRANSCRIPTION, "--output", earlier=_earlier_output)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    todo = [r for r in recordings if _finished(work, r, settings) is None]
    mine = todo[state.process_index :: state.num_processes]
    if mine:
        judges, diarizer = _listeners(cfg)
        hours = sum(_seconds(r.path) for r in mine) / 3600
        with tqdm(
            total=round(hours, 3),
            unit="h",
            desc="transcribe",
            disable=not state.is_local_main_process,
            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}]",
        ) as bar:
            for recording in mine:
                item = transcribe_recording(recording, cfg, judges, diarizer, output)
                item["key"] = recording.key(settings)
                _write_json(work / f"{recording.name}.json", item)
                bar.update(round(item["seconds"] / 3600, 3))
    state.wait_for_everyone()
    report = {}
    if state.is_main_process:
        report = assemble(output, [r.name for r in recordings], settings, cfg)
    state.wait_for_everyone()
    return report


def _earlier_output(folder: Path) -> bool:
    """An output of transcribe from before outputs were marked: its own files alone, its work folder among them."""
    names = {p.name for p in folder.iterdir()}
    return WORK in names and names <= {WORK, "audio", METADATA_FILE, "dropped.tsv", "report.json"}


def _listeners(cfg: Config) -> tuple[Judges, Diarizer | None]:
    """The recogniser and speaker encoder (both required: neither may be "none" here), and the diarizer when
    one is named, loaded once per process."""
    t = cfg.transcribe
    judges = Judges(load_recogniser(t.asr, t.device, language=t.language), load_speaker_encoder(t.speaker, t.device))
    return judges, None if t.diarizer == "none" else Diarizer(t.diarizer, t.device)


def _seconds(path: Path) -> float:
    try:
        return sf.info(str(path)).duration
    except (sf.LibsndfileError, RuntimeError):
        return 0.0


def _finished(work: Path, recording: Recording, settings: str) -> dict | None:
    path = work / f"{recording.name}.json"
    if not path.exists():
        return None
    item = json.loads(path.read_text())
    return item if item.get("key") == recording.key(settings) else None


def _write_json(path: Path, data: dict) -> None:
    write_whole(path, json.dumps(data))


def transcribe_recording(
    recording: Recording, cfg: Config, judges: Judges, diarizer: Diarizer | None, output: Path
) -> dict:
    """One recording's segments (written under output/audio/<name>/), what was dropped, its speakers'
    centroids and each stage's seconds; `diarizer`, when given, decides who speaks instead of clustering."""
    t = cfg.transcribe
    item = {
        "name": recording.name,
        "source": recording.source,
        "seconds": 0.0,
        "kept": [],
        "dropped": [],
        "centroids": [],
        "timings": dict.fromkeys(STAGES, 0.0),
        "problem": None,
        "judges": judges.names() | ({"diarizer": diarizer.name} if diarizer is not None else {}),
    }
    try:
        data, rate = sf.read(str(recording.path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        item["problem"] = f"cannot decode: {err}"
        return item
    mono = data.mean(1)
    item["seconds"] = len(mono) / rate
    if not np.isfinite(mono).all() or not len(mono):
        item["problem"] = "no samples" if not len(mono) else "NaN or infinite samples"
        return item
    wave = to_16k(mono, rate)
    total = len(wave) / RATE
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        item["timings"][stage] += time.perf_counter() - clock
        clock = time.perf_counter()

    regions = speech_regions(wave, t.vad_threshold, t.min_silence, cfg.prepare.max_seconds)
    lap("vad")
    windows = embed_regions(judges.speaker, wave, regions)
    lap("speaker_embedding")
    if diarizer is None:
        centroids = assign_speakers(regions, windows, t.speakers, t.speaker_threshold, t.min_voice_similarity)
    else:  # its time counts as clustering's
        centroids = assign_from_turns(regions, windows, diarizer.turns(wave, t.speakers), t.min_voice_similarity)
    item["centroids"] = centroids.tolist()
    lap("clustering")
    heard = [r for r in regions if r.problem is None]
    found = judges.recogniser.hear([wave[int(r.start * RATE) : int(r.end * RATE)] for r in heard], RATE)
    for region, said in zip(heard, found, strict=True):
        region.words = None if said.words is None else recognised_words(said.words, region.start, t.normalize)
        if region.words is not None:
            region.text = " ".join(w.text for w in region.words)
        else:
            region.text = (spoken(said.text) if t.normalize == "numbers" else " ".join(said.text.split())).replace(
                "|", " "
            )
        region.confidence = 1.0 if said.confidence is None else said.confidence
        if not region.text and region.seconds >= WORDLESS:
            region.problem = "speech in which the recogniser heard no words"
        elif t.min_confidence and region.confidence < t.min_confidence:
            region.problem = f"recogniser unsure (confidence {region.confidence:.2f})"
    lap("recogniser")

    item["dropped"] = _dropped_regions(regions)
    folder = output / "audio" / recording.name
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.flac"), *folder.glob("*.json")]:  # an earlier run's, with other settings or
        stale.unlink()  # another version of the file
    for segment in group(regions, total, cfg.prepare.max_seconds, t.max_pause):
        row = {"start": round(segment.start, 3), "end": round(segment.end, 3)}
        piece = mono[int(segment.start * rate) : int(segment.end * rate)]
        said = dialogue_text(segment.regions)
        problem = _segment_problem(segment, piece, said, cfg)
        if problem is not None:
            item["dropped"].append({**row, "reason": problem, "text": said[0] if said else ""})
            continue
        file = folder / f"{recording.name}_{len(item['kept']):04d}.flac"
        sf.write(str(file), np.clip(piece, -1.0, 1.0), rate, subtype="PCM_16")
        timed = alignments(segment, said[1])
        if timed is not None:
            _write_json(file.with_suffix(".json"), {"alignments": timed})
        kept = {**row, "file": file.relative_to(output).as_posix(), "text": said[0], "speakers": said[1]}
        item["kept"].append({**kept, "timed": timed is not None})
    item["dropped"].sort(key=lambda d: d["start"])
    return item


def _dropped_regions(regions: list[Region]) -> list[dict]:
    """Regions with a problem, consecutive ones with the same reason as one row."""
    rows: list[dict] = []
    previous = None
    for region in regions:
        if region.problem is None:
            previous = None
        elif previous is not None and previous["reason"] == region.problem:
            previous["end"] = round(region.end, 3)
        else:
            previous = {
                "start": round(region.start, 3),
                "end": round(region.end, 3),
                "reason": region.problem,
                "text": region.text,
            }
            rows.append(previous)
    return rows


def _segment_problem(segment: Segment, piece: np.ndarray, said, cfg: Config) -> str | None:
    t = cfg.transcribe
    if segment.seconds < t.min_seconds:
        return f"shorter than transcribe.min_seconds ({segment.seconds:.2f} s)"
    if said is None:
        return "more than two speakers in one segment"
    if not said[0]:
        return "no words recognised"
    rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
    loudness = 20 * np.log10(max(rms, 1e-10))
    if loudness < t.min_rms_db:
        return f"too quiet ({loudness:.0f} dBFS)"
    clipped = float(np.mean(np.abs(piece) >= 0.999))
    if clipped > t.max_clipped:
        return f"clipped ({clipped:.2%} of samples at full scale)"
    return None
