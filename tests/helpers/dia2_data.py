"""Tiny Dia2 material for tests: the fixture model with its assets inside its folder (a word-level tokenizer and a
tiny random Mimi), and prepared datasets of codes and timed words in which each word's audio follows a rule, so
a model can learn it and held-out recordings show what it learned."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from datasets import Array2D, Dataset, Features, List, Value

from dia_tpu.artifacts.owner import DATASET, mark
from dia_tpu.families.dia2.tiny import write_mimi, write_tokenizer

VOCAB = {"<unk>": 0, "<bos>": 1, "[S1]": 5, "[S2]": 6, "hello": 10, "there": 11, "hi": 12, "again": 13, "friend": 14}
SAID = ["hello", "there", "hi", "again", "friend"]
CODEBOOKS, CODES = 4, 32  # the fixture model's codebooks and codebook size
FRAME_RATE = 12.5


def dia2_folder(tiny: Path, folder: Path) -> Path:
    """The tiny Dia2 of `tiny` copied to `folder` with its assets inside, as a fine-tune exports it: a word-level
    tokenizer with [S1]/[S2], and a tiny random Mimi (4 codebooks of 32) whose codebooks are drawn, so codes
    decode apart."""
    shutil.copytree(tiny, folder)
    write_tokenizer(VOCAB, folder / "tokenizer")
    write_mimi(CODEBOOKS, CODES, folder / "mimi")
    config = json.loads((folder / "config.json").read_text())
    config["assets"] = {"tokenizer": "tokenizer", "mimi": "mimi"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def recording(rng: random.Random) -> dict:
    """A dialogue of 3 to 5 words with its codes: each word lasts 4 to 6 frames after a 1 to 3 frame pause; while
    a word lasts, codebook c at its k-th frame holds (3 * word + 5 * c + k) mod 32, in a pause code 0."""
    words, frames, speaker = [], [], rng.choice([1, 2])
    position = 0
    for _ in range(rng.randint(3, 5)):
        pause, length, word = rng.randint(1, 3), rng.randint(4, 6), rng.randrange(len(SAID))
        frames += [[0] * CODEBOOKS] * pause
        start = position + pause
        frames += [[(3 * word + 5 * c + k) % CODES for c in range(CODEBOOKS)] for k in range(length)]
        position = start + length
        words.append({"word": SAID[word], "start": start, "end": position, "speaker": speaker})
        speaker = speaker if rng.random() < 0.7 else 3 - speaker
    frames += [[0] * CODEBOOKS] * 2
    text = " ".join(f"[S{w['speaker']}] {w['word']}" for w in words)
    return {"text": text, "codes": frames, "frames": len(frames), "words": words}


def write_dataset(folder: Path, count: int, seed: int) -> Path:
    """A prepared Dia2 dataset of `count` recordings: the table, its manifest and the dataset mark."""
    rng = random.Random(seed)
    return write_rows(folder, [recording(rng) for _ in range(count)], f"dia2-{seed}")


def write_rows(folder: Path, rows: list[dict], fingerprint: str) -> Path:
    """`rows` (text, codes, frames, words) as a prepared Dia2 dataset."""
    for i, row in enumerate(rows):
        row |= {"duration": row["frames"] / FRAME_RATE, "source_id": f"dialogue_{i:03d}"}
        row.setdefault("speaker", "")
        row["key"], row["language"] = row["source_id"], "en"
    folder.mkdir(parents=True)
    mark(folder, DATASET)
    word = {"word": Value("string"), "start": Value("int32"), "end": Value("int32"), "speaker": Value("int8")}
    features = Features(
        {
            "text": Value("string"),
            "codes": Array2D(shape=(None, CODEBOOKS), dtype="int16"),
            "frames": Value("int32"),
            "words": List(word),
            "duration": Value("float32"),
            "source_id": Value("string"),
            "speaker": Value("string"),
            "key": Value("string"),
            "language": Value("string"),
        }
    )
    Dataset.from_list(rows, features=features).save_to_disk(str(folder))
    manifest = {
        "codec": {"name": "tiny random Mimi"},
        "fingerprint": fingerprint,
        "sample_rate": 24000,
        "frame_rate": FRAME_RATE,
        "num_codebooks": CODEBOOKS,
        "kept": len(rows),
        "frames": sum(row["frames"] for row in rows),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
