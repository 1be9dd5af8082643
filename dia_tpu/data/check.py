"""`dia-tpu check`: what in a prepared dataset and its config will train badly, found before training.

Each finding names how many items it concerns, a few of them by source id, and what to change:
- data that does not fit the model: another codec or codebook count, or limits beyond its positions (training
  refuses these at its start);
- clips longer than `data.max_audio_frames`: cropped, so they never end in the training window and teach no
  EOS (a model trained only on those does not learn to stop);
- transcripts longer than `data.max_text_tokens` bytes (a non-Latin script takes 2-3 bytes a character);
- speaker tags that do not start with `[S1]`, repeat the same speaker twice in a row, or are missing;
- characters outside ASCII when fine-tuning a pretrained Dia (it was trained on English: they reach it as
  byte sequences it has not seen);
- speakers with less audio than `min_speaker_seconds`;
- with `data.prompt_pairs`, pairings whose two transcripts exceed the text limit (never trained), items
  that can never be prompted and items every prompt would crop;
- a local native `model.pretrained` whose weights do not match its `config.json` (one release's weights with
  the other's config, or another size's).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import load_from_disk

from dia_tpu.config import Config
from dia_tpu.data.dataset import prompt_limit, prompt_partners, prompted_text, text_tokens
from dia_tpu.data.shards import MANIFEST_FILE, read_prepare_info
from dia_tpu.model.build import architecture_config
from dia_tpu.model.codec import codec_identity

TAG = re.compile(r"\[S[12]\]")
SHOWN = 3  # source ids named per finding


@dataclass
class Finding:
    what: str  # one line: how many, and why it matters
    fix: str  # what to change
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        shown = f" (e.g. {', '.join(self.examples[:SHOWN])})" if self.examples else ""
        return f"{self.what}{shown}; {self.fix}"


def check_dataset(cfg: Config, min_speaker_seconds: float = 60.0) -> tuple[int, list[Finding]]:
    """The number of items in `data.dataset`, and every finding about them under `cfg`."""
    d = cfg.data
    if not (Path(d.dataset) / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"data.dataset: {d.dataset} is not a prepared dataset; run dia-tpu prepare first")
    table = load_from_disk(d.dataset)
    texts, frames, ids = table["text"], table["frames"], table["source_id"]
    speakers, durations = table["speaker"], table["duration"]
    findings = [
        Finding(problem, "prepare again with model.codec, or fix the model or the limits")
        for problem in data_model_problems(cfg, read_prepare_info(d.dataset), architecture_config(cfg.model))
    ]
    findings += _checkpoint_findings(cfg)
    limit = max([d.max_audio_frames, *d.buckets])
    cropped = [i for i, n in enumerate(frames) if n > limit]
    if cropped:
        everything = " (all of them: the model will not learn to stop)" if len(cropped) == len(frames) else ""
        findings.append(
            Finding(
                f"{len(cropped)} of {len(frames)} clips are longer than data.max_audio_frames={limit} and are cropped, "
                f"so they teach no end{everything}",
                "raise data.max_audio_frames, or prepare with a lower prepare.max_seconds so long clips are split",
                [f"{ids[i]} ({frames[i]} frames)" for i in cropped],
            )
        )
    lengths = [text_tokens(t, d) for t in texts]
    long = [i for i, n in enumerate(lengths) if n > d.max_text_tokens]
    if long:
        wide = sum(len(texts[i].encode()) > 1.5 * len(texts[i]) for i in long)
        script = f"; {wide} of them mostly in a script of 2-3 bytes a character" if wide else ""
        findings.append(
            Finding(
                f"{len(long)} transcripts are longer than data.max_text_tokens={d.max_text_tokens} bytes{script}",
                f"raise data.max_text_tokens (the longest takes {max(lengths)}) or set data.long_text=skip",
                [f"{ids[i]} ({lengths[i]} bytes)" for i in long],
            )
        )
    if d.prompt_pairs > 0:
        findings += _pair_findings(table, cfg, ids)
    findings += _tag_findings(texts, ids)
    if cfg.model.pretrained is not None:
        unseen = Counter(c for t in texts for c in TAG.sub("", t) if ord(c) > 127)
        if unseen:
            items = [ids[i] for i, t in enumerate(texts) if any(ord(c) > 127 for c in t)]
            shown = " ".join(f"{c!r}×{n}" for c, n in unseen.most_common(8))
            findings.append(
                Finding(
                    f"{len(items)} transcripts hold characters outside ASCII ({shown}), which the pretrained Dia "
                    "(trained on English) has not seen",
                    "transliterate them where the language allows, or expect more steps for the model to learn them",
                    items,
                )
            )
    findings += speaker_findings(speakers, durations, min_speaker_seconds)
    return len(texts), findings


def speaker_findings(speakers: list[str], durations: list[float], min_speaker_seconds: float) -> list[Finding]:
    """Speakers with less audio than `min_speaker_seconds` (where there is more than one speaker)."""
    seconds: Counter = Counter()
    for speaker, duration in zip(speakers, durations, strict=True):
        seconds[speaker or "(no speaker)"] += duration
    few = sorted((s for s, total in seconds.items() if total < min_speaker_seconds), key=lambda s: seconds[s])
    if not few or len(seconds) < 2:
        return []
    return [
        Finding(
            f"{len(few)} of {len(seconds)} speakers have under {min_speaker_seconds:g} s of audio",
            "record more of them or leave them out: a voice heard this little is learned badly",
            [f"{s} ({seconds[s]:.1f} s)" for s in few],
        )
    ]


def _checkpoint_findings(cfg: Config) -> list[Finding]:
    """A local native model.pretrained whose weights do not match the config.json beside them (the other
    release's file, or another size's): found from the files' headers, before anything is loaded."""
    from dia_tpu.model.build import is_native
    from dia_tpu.model.native_files import checkpoint_problems

    source = cfg.model.pretrained
    if source is None or not Path(source).exists() or not is_native(cfg.model):
        return []
    release, problems = checkpoint_problems(source)
    return [
        Finding(
            f"model.pretrained {source}: the weights do not match its config.json (the {release} schema): {problem}",
            "put the config.json published with these weights beside them (dia-v0_1.pth: "
            "nari-labs/Dia-1.6B's; Dia-1.6B-0626's weights: its own)",
        )
        for problem in problems
    ]


def data_model_problems(cfg: Config, info: dict, model_config) -> list[str]:
    """Where the prepared data (its manifest `info`) and the config's limits do not fit the model: another codec,
    another codebook count, or more text or audio positions than the model has."""
    problems = []
    expected = codec_identity(cfg.model)
    if info["codec"] != expected:
        problems.append(f"{cfg.data.dataset} was encoded with codec {info['codec']}, but model.codec is {expected}")
    delay = list(model_config.delay_pattern)
    if info["num_codebooks"] != len(delay):
        problems.append(f"{cfg.data.dataset} has {info['num_codebooks']} codebooks but the model has {len(delay)}")
    text_positions = model_config.encoder_config.max_position_embeddings
    if cfg.data.max_text_tokens > text_positions:
        problems.append(
            f"data.max_text_tokens={cfg.data.max_text_tokens} is more than the model's encoder reads "
            f"({text_positions} positions)"
        )
    audio_positions = model_config.decoder_config.max_position_embeddings
    if cfg.data.max_audio_frames + 2 + max(delay) > audio_positions:
        problems.append(
            f"data.max_audio_frames={cfg.data.max_audio_frames} plus BOS, EOS and the delay "
            f"({2 + max(delay)}) is more than the model's decoder holds "
            f"({audio_positions} positions)"
        )
    return problems


def _pair_findings(table, cfg: Config, ids: list[str]) -> list[Finding]:
    """With data.prompt_pairs: items that can never get a prompt, and items a prompt would crop."""
    d = cfg.data
    partners = prompt_partners(table, d)
    frames = table["frames"]
    alone = [i for i in range(len(frames)) if not [j for j in partners.get(i, ()) if j != i]]
    crowded = [
        i
        for i, found in partners.items()
        if (others := [frames[j] for j in found if j != i]) and min(others) + frames[i] > d.max_audio_frames
    ]
    texts = table["text"]
    fits = {
        i: [text_tokens(prompted_text(texts[j], texts[i]), d) <= d.max_text_tokens for j in group if j != i]
        for i, group in partners.items()
    }
    wordy = [i for i, ok in fits.items() if ok and not any(ok)]
    pairings = [x for ok in fits.values() for x in ok]
    found = []
    if pairings and sum(pairings) < len(pairings):
        longest = max(text_tokens(prompted_text(texts[j], texts[i]), d) for i, group in partners.items() for j in group)
        found.append(
            Finding(
                f"{len(pairings) - sum(pairings)} of {len(pairings)} prompt pairings are never trained: the two "
                f"transcripts together exceed data.max_text_tokens={d.max_text_tokens}; {len(wordy)} items have no "
                "pairing that fits",
                f"raise data.max_text_tokens (the longest pairing takes {longest}) so both transcripts fit",
                [ids[i] for i in wordy],
            )
        )
    if alone:
        found.append(
            Finding(
                f"{len(alone)} items can never be trained with a voice prompt (data.prompt_pairs): their speaker has "
                f"no other clip of at most {prompt_limit(d)} frames, or they have no speaker",
                "give every clip a speaker, and each speaker some short clips (or raise data.prompt_max_frames)",
                [ids[i] for i in alone],
            )
        )
    if crowded:
        found.append(
            Finding(
                f"{len(crowded)} items are cropped whenever they are prompted: even their speaker's shortest other "
                f"clip and they exceed data.max_audio_frames={d.max_audio_frames}",
                "raise data.max_audio_frames or lower data.prompt_max_frames",
                [ids[i] for i in crowded],
            )
        )
    return found


def _tag_findings(texts: list[str], ids: list[str]) -> list[Finding]:
    untagged, second, repeated = [], [], []
    for source_id, text in zip(ids, texts, strict=True):
        tags = TAG.findall(text)
        if not tags:
            untagged.append(source_id)
            continue
        if not text.lstrip().startswith("[S1]"):
            second.append(source_id)
        if any(a == b for a, b in zip(tags, tags[1:], strict=False)):
            repeated.append(source_id)
    found = []
    if untagged:
        found.append(
            Finding(
                f"{len(untagged)} transcripts have no [S1]/[S2] tag",
                "start each with [S1] (Dia reads every line as a dialogue)",
                untagged,
            )
        )
    if second:
        found.append(
            Finding(
                f"{len(second)} transcripts start with [S2] or with text before the first tag",
                "start each with [S1]: Dia's data always does, and generation prompts start so",
                second,
            )
        )
    if repeated:
        found.append(
            Finding(
                f"{len(repeated)} transcripts give the same speaker tag twice in a row",
                "join the two turns under one tag: tags mark changes of speaker",
                repeated,
            )
        )
    return found
