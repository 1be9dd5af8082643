"""Who speaks in each region: speaker embeddings (the evaluation's encoders) clustered per recording, then
`[S1]`/`[S2]` tags turn by turn inside a segment, and optionally one voice name across recordings.

Every region is embedded as windows of WINDOW seconds (a region shorter than that is one window); its
embedding is the mean of its windows'. Regions of at least MIN_CLUSTERED seconds are clustered by average
linkage on cosine similarity (scipy's), to a given count or while two clusters are at least `threshold` alike;
shorter regions take the nearest cluster. A region whose windows change voice is marked (two voices at
once, or a turn with no pause between), and so is one far from its own speaker (an unclear voice).
"""

from __future__ import annotations

import itertools

import numpy as np

from dia_tpu.listen.speaker import SpeakerEncoder
from dia_tpu.transcribe.regions import RATE, Region

WINDOW, HOP = 1.5, 0.75  # seconds
MIN_CLUSTERED = 1.0  # shorter regions are too short to found a speaker
# Average linkage holds every pair's distance, so memory grows with the square of the count: 5000 regions take about
# 0.5 GB and a few seconds. Past it the longest regions found the clusters.
MAX_CLUSTERED = 5000
MIXED_RUN = 2  # windows in a row (about 2.25 s) of a second voice that make a region two voices
MIXED_SECONDS = 0.5  # with a diarizer: a second speaker's turns covering this much of a region


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9)


def embed_regions(encoder: SpeakerEncoder, wave: np.ndarray, regions: list[Region]) -> list[np.ndarray]:
    """[windows, d] unit embeddings per region of a 16 kHz recording."""
    pieces, owner = [], []
    for i, region in enumerate(regions):
        start, end = int(region.start * RATE), int(region.end * RATE)
        width, hop = int(WINDOW * RATE), int(HOP * RATE)
        offsets = range(start, max(start + 1, end - width + 1), hop) if end - start > width else [start]
        for offset in offsets:
            pieces.append(wave[offset : min(end, offset + width)])
            owner.append(i)
    found = _unit(encoder.embed(pieces, RATE)) if pieces else np.zeros((0, 1))
    owner = np.array(owner)
    return [found[owner == i] for i in range(len(regions))]


def cluster(embeddings: np.ndarray, count: int, threshold: float) -> np.ndarray:
    """Average-linkage clusters of unit embeddings [n, d]: `count` of them, or (count 0) merged while the
    most alike pair's mean cosine similarity is at least `threshold`. Labels 0.. in order of first row."""
    from scipy.cluster.hierarchy import cut_tree, fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=int)
    # Distance 1 - similarity: average linkage's distance between two clusters is then 1 - their mean pairwise
    # similarity, and merging while that similarity is at least `threshold` is cutting the tree at 1 - threshold.
    distance = np.clip(1.0 - embeddings @ embeddings.T, 0.0, None)
    tree = linkage(squareform(distance, checks=False), method="average")
    if count:
        labels = cut_tree(tree, n_clusters=min(count, n))[:, 0]
    else:
        labels = fcluster(tree, 1.0 - threshold, criterion="distance")
    order = {label: k for k, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels.tolist()])


def assign_speakers(
    regions: list[Region], windows: list[np.ndarray], count: int, threshold: float, min_similarity: float
) -> np.ndarray:
    """Set each region's speaker and similarity, and the problem of one that is two voices or unclear;
    returns the speakers' unit centroids [k, d]."""
    means = np.stack([_unit(w.mean(0)) for w in windows]) if windows else np.zeros((0, 1))
    long = [i for i, r in enumerate(regions) if r.seconds >= MIN_CLUSTERED and r.problem is None]
    long = sorted(long, key=lambda i: -regions[i].seconds)[:MAX_CLUSTERED]
    long.sort()
    if not long:
        long = [i for i, r in enumerate(regions) if r.problem is None]
    if not long:
        return np.zeros((0, means.shape[1] if len(means) else 1))
    labels = cluster(means[long], count, threshold)
    centroids = np.stack([_unit(means[long][labels == k].mean(0)) for k in range(labels.max() + 1)])
    for i, region in enumerate(regions):
        scores = means[i] @ centroids.T
        region.speaker = int(scores.argmax())
        region.similarity = float(scores.max())
        if region.problem is None and len(centroids) > 1 and _changes_voice((windows[i] @ centroids.T).argmax(1)):
            region.problem = "two voices in one stretch (overlapping speech, or a turn with no pause)"
        elif region.problem is None and region.similarity < min_similarity:
            region.problem = f"unclear voice (similarity {region.similarity:.2f} to its speaker)"
    return centroids


def assign_from_turns(
    regions: list[Region], windows: list[np.ndarray], turns: list[tuple[float, float, str]], min_similarity: float
) -> np.ndarray:
    """Speakers from a diarizer's turns (start, end, label) instead of clustering: each region takes the
    label that covers most of it, and one where a second label covers MIXED_SECONDS or more is two voices.
    The encoder's embeddings still give each speaker's centroid (for voice names across recordings) and each
    region's similarity to it. Returns the centroids [k, d], speakers numbered in order of first turn."""
    order = {label: k for k, label in enumerate(dict.fromkeys(label for _, _, label in sorted(turns)))}
    covered = np.zeros((len(regions), max(len(order), 1)))
    for i, region in enumerate(regions):
        for start, end, label in turns:
            covered[i, order[label]] += max(0.0, min(end, region.end) - max(start, region.start))
    means = [_unit(w.mean(0)) for w in windows]
    heard = [i for i in range(len(regions)) if covered[i].max() > 0]
    for i, region in enumerate(regions):
        if i not in heard:
            if region.problem is None:
                region.problem = "no speaker turn from the diarizer"
            continue
        region.speaker = int(covered[i].argmax())
        second = np.sort(covered[i])[-2] if len(order) > 1 else 0.0
        if region.problem is None and second >= MIXED_SECONDS:
            region.problem = "two voices in one stretch (overlapping speech, or a turn with no pause)"
    width = means[0].shape[-1] if means else 1
    centroids = np.zeros((len(order), width))
    for k in range(len(order)):
        mine = [means[i] for i in heard if regions[i].speaker == k and regions[i].problem is None]
        if mine:
            centroids[k] = _unit(np.mean(mine, 0))
    for i in heard:
        region = regions[i]
        region.similarity = float(means[i] @ centroids[region.speaker])
        if region.problem is None and region.similarity < min_similarity:
            region.problem = f"unclear voice (similarity {region.similarity:.2f} to its speaker)"
    return centroids


def _changes_voice(heard: np.ndarray) -> bool:
    """Whether a region's windows, each labelled with its nearest speaker, say that its voice changes: two
    speakers each hold a run of MIXED_RUN windows, or the first or last window (a turn that starts or ends
    inside the region, where one window is all the other voice gets). One odd window inside is noise."""
    runs = [(label, len(list(group))) for label, group in itertools.groupby(heard.tolist())]
    counted = {label for i, (label, length) in enumerate(runs) if length >= MIXED_RUN or i in (0, len(runs) - 1)}
    return len(counted) > 1


def dialogue_text(regions: list[Region]) -> tuple[str, list[int]] | None:
    """`[S1] ... [S2] ... [S1] ...` for a segment's regions, tags given in order of appearance, and the
    speakers in tag order; None when more than two speakers take part."""
    speakers: list[int] = []
    parts: list[str] = []
    last = None
    for region in regions:
        if not region.text:
            continue
        if region.speaker not in speakers:
            speakers.append(region.speaker)
        if len(speakers) > 2:
            return None
        if region.speaker != last:
            parts.append(f"[S{speakers.index(region.speaker) + 1}]")
            last = region.speaker
        parts.append(region.text)
    return " ".join(parts), speakers


def name_voices(centroids: dict[str, np.ndarray], threshold: float) -> dict[str, dict[int, str]]:
    """Voice names across recordings: {recording: {speaker: name}}. Speakers of different recordings whose
    centroids are at least `threshold` alike (average linkage) share a name `voice_NN`; with threshold 0
    every recording keeps its own, `<recording>:<speaker>`."""
    keys = [(recording, k) for recording, found in centroids.items() for k in range(len(found))]
    if threshold <= 0 or not keys:
        return {recording: {k: f"{recording}:{k}" for k in range(len(found))} for recording, found in centroids.items()}
    labels = cluster(np.concatenate([found for found in centroids.values() if len(found)]), 0, threshold)
    names: dict[str, dict[int, str]] = {recording: {} for recording in centroids}
    for (recording, k), label in zip(keys, labels.tolist(), strict=True):
        names[recording][k] = f"voice_{label:02d}"
    return names
