"""Synthetic English speech for the demo codec: sentences from a seeded grammar, spoken by espeak-ng.

Training and held-out sets never share a voice or a sentence: the held-out voices use accents and
voice variants the training set does not, and a sentence is drawn once for the whole corpus. The
bundled sample's sentences are kept out of both. Audio comes out at 44.1 kHz, float32, mono.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from make_sample import SAMPLE_RATE, UTTERANCES, synthesize

RATE = 44100

TRAIN_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m6", "m7", "f1", "f3", "f4", "Andy", "annie", "edward"]
HELD_OUT_ACCENTS = ["en-us-nyc", "en-gb-x-gbclan"]
HELD_OUT_VARIANTS = ["m5", "m8", "f2", "f5"]

SUBJECTS = [
    "I",
    "we",
    "you",
    "they",
    "my sister",
    "the old man",
    "our neighbour",
    "the teacher",
    "a small child",
    "the driver",
    "his friend",
    "the doctor",
    "her brother",
    "the farmer",
    "everyone",
    "the captain",
    "my uncle",
    "the students",
    "the baker",
    "nobody",
]
VERBS = [
    "found",
    "painted",
    "carried",
    "wanted",
    "bought",
    "cleaned",
    "forgot",
    "opened",
    "watched",
    "needed",
    "borrowed",
    "fixed",
    "sold",
    "visited",
    "left",
    "moved",
    "counted",
    "packed",
    "noticed",
    "cooked",
    "followed",
    "lost",
    "washed",
    "ordered",
    "remembered",
    "described",
]
ADJECTIVES = [
    "red",
    "heavy",
    "quiet",
    "broken",
    "little",
    "golden",
    "empty",
    "bright",
    "wooden",
    "strange",
    "warm",
    "yellow",
    "narrow",
    "famous",
    "cheap",
    "green",
    "tired",
    "clever",
    "round",
    "dusty",
    "fresh",
    "dark",
    "tiny",
    "shiny",
    "plain",
    "soft",
]
NOUNS = [
    "box",
    "window",
    "garden",
    "letter",
    "bicycle",
    "kitchen",
    "river",
    "basket",
    "ticket",
    "blanket",
    "chair",
    "mountain",
    "bottle",
    "picture",
    "engine",
    "castle",
    "jacket",
    "bridge",
    "pencil",
    "market",
    "horse",
    "lamp",
    "forest",
    "sandwich",
    "umbrella",
    "village",
    "piano",
    "kettle",
    "ladder",
    "carpet",
    "rabbit",
    "wagon",
    "orange",
    "mirror",
    "island",
    "shoe",
]
PLACES = [
    "near the station",
    "in the morning",
    "after dinner",
    "behind the school",
    "on the roof",
    "by the sea",
    "under the table",
    "before noon",
    "at the party",
    "in the rain",
    "across the street",
    "last summer",
    "on Monday",
    "at midnight",
    "in the city",
    "next to the church",
    "during the storm",
    "at the weekend",
    "in the yard",
    "by the fire",
]
ADVERBS = [
    "slowly",
    "quickly",
    "again",
    "carefully",
    "happily",
    "twice",
    "almost",
    "suddenly",
    "finally",
    "quietly",
    "gladly",
    "nearly",
    "really",
    "often",
    "never",
    "already",
]
QUESTIONS = [
    "Where did {s} put the {a} {n}?",
    "Why is the {n} so {a}?",
    "Can {s} see the {n} {p}?",
    "Did {s} really want a {a} {n}?",
    "How many {n}s are {p}?",
    "Who {v} the {n} {p}?",
    "What will {s} do with the {a} {n}?",
    "Is it true that {s} {v} a {n}?",
]
STATEMENTS = [
    "{S} {v} the {a} {n} {p}.",
    "{S} {d} {v} a {a} {n}.",
    "{S} said the {n} was {a}.",
    "The {a} {n} is {p}.",
    "{S} {v} {k} {n}s {p}.",
    "Please bring the {a} {n} {p}.",
    "{S} {v} it {d}, and then the {n} was {a}.",
    "There are {k} {a} {n}s {p}.",
    "{S} will not forget the {a} {n}.",
    "Tell me about the {n} {p}.",
    "If the {n} is {a}, {s} will buy it.",
    "{S} {v} the {n} and the {n2} {p}.",
]
TEMPLATES = QUESTIONS + STATEMENTS + STATEMENTS
NUMBERS = [
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "twelve",
    "twenty",
    "forty",
    "a hundred",
    "several",
    "many",
    "a few",
]


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    pitch: int
    speed: int

    def args(self) -> list[str]:
        return ["-v", f"{self.accent}+{self.variant}", "-p", str(self.pitch)]

    def name(self) -> str:
        return f"{self.accent}+{self.variant} -p {self.pitch} -s {self.speed}"


def sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    subject = rng.choice(SUBJECTS)
    return template.format(
        s=subject,
        S=subject[0].upper() + subject[1:],
        v=rng.choice(VERBS),
        a=rng.choice(ADJECTIVES),
        n=rng.choice(NOUNS),
        n2=rng.choice(NOUNS),
        p=rng.choice(PLACES),
        d=rng.choice(ADVERBS),
        k=rng.choice(NUMBERS),
    )


def distinct_sentences(rng: random.Random, count: int, exclude: set[str]) -> list[str]:
    """`count` sentences, none repeated and none in `exclude` (compared lower-cased)."""
    seen = {s.lower() for s in exclude}
    out = []
    while len(out) < count:
        s = sentence(rng)
        if s.lower() not in seen:
            seen.add(s.lower())
            out.append(s)
    return out


def random_voice(rng: random.Random, accents: list[str], variants: list[str]) -> Voice:
    return Voice(rng.choice(accents), rng.choice(variants), rng.randint(25, 75), rng.randint(135, 185))


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: install it (Debian: apt-get install espeak-ng)")


def speak(text: str, voice: Voice) -> np.ndarray:
    """The bundled sample's synthesis (22.05 kHz) in `voice`, resampled to 44.1 kHz float32."""
    with tempfile.TemporaryDirectory() as tmp:
        wave = synthesize(text, voice.args(), Path(tmp) / "utt.wav", speed=voice.speed)
    return soxr.resample(wave, SAMPLE_RATE, RATE).astype(np.float32)


def training_audio(
    seed: int, passages: int, sentences_per_passage: int, exclude: set[str], workers: int = 2
) -> tuple[np.ndarray, list[dict]]:
    """Long passages, each a run of sentences in one random training voice, joined into one signal.

    Returns the signal and one recipe row per passage (voice and sentences) for the record."""
    require_espeak()
    rng = random.Random(seed)
    texts = distinct_sentences(rng, passages * sentences_per_passage, exclude)
    groups = [texts[i * sentences_per_passage : (i + 1) * sentences_per_passage] for i in range(passages)]
    voices = [random_voice(rng, TRAIN_ACCENTS, TRAIN_VARIANTS) for _ in groups]
    with ThreadPoolExecutor(workers) as pool:
        waves = list(pool.map(lambda g, v: speak(" ".join(g), v), groups, voices))
    recipe = [
        {"voice": v.name(), "sentences": g, "seconds": round(len(w) / RATE, 2)}
        for g, v, w in zip(groups, voices, waves, strict=True)
    ]
    return np.concatenate(waves), recipe


def held_out_utterances(seed: int, count: int, exclude: set[str]) -> list[tuple[str, Voice, np.ndarray]]:
    """Single sentences in held-out voices; `exclude` holds the training sentences."""
    require_espeak()
    rng = random.Random(f"held-out-{seed}")
    texts = distinct_sentences(rng, count, exclude)
    out = []
    for text in texts:
        voice = random_voice(rng, HELD_OUT_ACCENTS, HELD_OUT_VARIANTS)
        out.append((text, voice, speak(text, voice)))
    return out


def bundled_sentences() -> set[str]:
    """The bundled sample's sentences, kept out of the corpus."""
    return set(UTTERANCES)
