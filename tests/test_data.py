"""Text ids, the delay pattern, the collator and the per-item random decisions, checked against transformers'
own Dia tokenizer, processor and generation code so that training targets match what Dia sees at inference."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import DacConfig, DacModel, DiaConfig, DiaFeatureExtractor, DiaProcessor, DiaTokenizer

from dia_tpu.config import DataConfig, load
from dia_tpu.data.audio import encode
from dia_tpu.data.batching import IGNORE_INDEX, Collator, make_collator
from dia_tpu.data.dataset import CodesDataset, _filter_long_text, item_random
from dia_tpu.data.tokens import apply_delay, augment_tags, encode_text, revert_delay, split_tags, unconditional_text

ROOT = Path(__file__).resolve().parents[1]
DELAY = [0, 8, 9, 10, 11, 12, 13, 14, 15]
EOS, PAD, BOS = 1024, 1025, 1026
CHANNELS = len(DELAY)
RATE, HOP = 44100, 512
FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "codes": datasets.Array2D(shape=(None, CHANNELS), dtype="int16"),
        "frames": datasets.Value("int32"),
    }
)


def make_table(texts: list[str], codes: list[np.ndarray]) -> datasets.Dataset:
    """A prepared-codes table as `dia-tpu prepare` writes it: text, int16 codes [T, C], frames."""
    return datasets.Dataset.from_dict(
        {"text": texts, "codes": [c.astype(np.int16) for c in codes], "frames": [len(c) for c in codes]},
        features=FEATURES,
    )


def random_codes(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, (frames, CHANNELS)).astype(np.int16)


def items_of(table: datasets.Dataset, **data) -> list[dict]:
    dataset = CodesDataset(table, DataConfig(**data), 0.0, train=False)
    return [dataset[i] for i in range(len(dataset))]


def collate(items: list[dict], max_audio_frames: int, max_text_tokens: int = 32, fill_to: int = 0) -> dict:
    return Collator(max_text_tokens, max_audio_frames, DELAY, BOS, EOS, PAD, fill_to)(items)


# --- text -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[S1] Hello there. [S2] Hi! How are you?",
        "[S1] Café crème, s'il vous plaît. [S2] 日本語で話せます。",
        "no speaker tags at all",
        "[S1][S2](laughs) [S1]",
        " [S2] leading space and emoji 🎉",
        "[S3] and [s1] are plain text",
        "",
    ],
)
def test_encode_text_matches_dia_tokenizer(text):
    expected = DiaTokenizer()(text, add_special_tokens=False)["input_ids"]
    assert encode_text(text) == expected


# --- the collator against DiaProcessor --------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> DacModel:
    torch.manual_seed(0)
    return DacModel(DacConfig(encoder_hidden_size=8, decoder_hidden_size=32, sampling_rate=RATE)).eval()


@pytest.fixture(scope="module")
def processor(codec) -> DiaProcessor:
    return DiaProcessor(DiaFeatureExtractor(sampling_rate=RATE, hop_length=HOP), DiaTokenizer(), codec)


def waves(*hops: int) -> list[np.ndarray]:
    rng = np.random.default_rng(sum(hops))
    return [rng.uniform(-0.3, 0.3, n * HOP).astype(np.float32) for n in hops]


def run_processor(processor, texts: list[str], audio: list[np.ndarray]) -> dict:
    out = processor(text=texts, audio=audio, generation=False, output_labels=True, sampling_rate=RATE)
    size, steps = out["decoder_input_ids"].shape[:2]
    # The processor's labels are channel-major [B*C, T]; bring them to the collator's [B, T, C].
    labels = out["labels"].reshape(size, CHANNELS, steps).permute(0, 2, 1)
    return {**out, "labels": labels, "decoder_input_ids": out["decoder_input_ids"].long()}


def assert_same_text(batch: dict, reference: dict) -> None:
    width = reference["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:, :width], reference["input_ids"])
    assert torch.equal(batch["attention_mask"][:, :width], reference["attention_mask"])
    assert not batch["input_ids"][:, width:].any() and not batch["attention_mask"][:, width:].any()


@pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")
def test_collator_matches_processor_for_a_full_length_clip(processor, codec):
    text, [wave] = "[S1] Bonjour, ça va? [S2] 元気です。", waves(7)
    codes = encode(codec, [wave])[0]  # what `dia-tpu prepare` stores, [T, C]
    frames = codes.shape[0]
    reference = run_processor(processor, [text], [wave])
    items = items_of(make_table([text], [codes]), max_audio_frames=frames)
    batch = make_collator(DataConfig(max_text_tokens=48, max_audio_frames=frames), DiaConfig())(items)

    assert torch.equal(batch["decoder_input_ids"], reference["decoder_input_ids"])
    assert torch.equal(batch["labels"], reference["labels"])
    assert_same_text(batch, reference)


@pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")
def test_collator_matches_processor_apart_from_padding_side(processor, codec):
    texts, clips = ["[S1] A longer clip.", "[S2] Short."], waves(7, 4)
    codes = [encode(codec, [w])[0] for w in clips]
    longest = max(len(c) for c in codes)
    reference = run_processor(processor, texts, clips)
    batch = collate(items_of(make_table(texts, codes), max_audio_frames=longest), longest)
    steps = batch["decoder_input_ids"].shape[1]
    assert reference["decoder_input_ids"].shape == batch["decoder_input_ids"].shape

    for i, item_codes in enumerate(codes):
        left = longest - len(item_codes)  # rows the processor pads on the left
        real = steps - left
        # The processor's left padding is BOS rows outside the attention mask, never a target.
        assert (reference["decoder_input_ids"][i, :left] == BOS).all()
        assert not reference["decoder_attention_mask"][i, :left].any()
        assert (reference["labels"][i, :left] == IGNORE_INDEX).all()
        # The real part is identical, only shifted.
        assert torch.equal(batch["decoder_input_ids"][i, :real], reference["decoder_input_ids"][i, left:])
        assert torch.equal(batch["labels"][i, :real], reference["labels"][i, left:])
        # The collator's trailing rows hold no codes and no targets.
        assert (batch["decoder_input_ids"][i, real:] >= EOS).all()
        assert (batch["labels"][i, real:] == IGNORE_INDEX).all()
    assert_same_text(batch, reference)


# --- the delay pattern ------------------------------------------------------------------------------------


def delay_patterns() -> dict[str, list[int]]:
    """Every pattern a shipped config trains with, Dia's own (what hub checkpoints use), a stereo one
    (left and right codebooks each with Dia's delays), and two edge cases."""
    found = {"dia-default": DiaConfig().delay_pattern, "stereo-18": DELAY * 2, "none": [0] * 9, "ramp": [0, 1, 2, 3]}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        pattern = load(path).model.architecture.get("delay_pattern")
        if pattern:
            found[f"configs/{path.name}"] = pattern
    return found


@pytest.mark.parametrize("delay", list(delay_patterns().values()), ids=list(delay_patterns()))
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 2)], ids=["unbatched", "batched", "2d-batch"])
def test_delay_round_trip_and_specials(delay, batch_shape):
    steps, channels = 20, len(delay)
    codes = torch.randint(0, 1024, (*batch_shape, steps, channels), generator=torch.Generator().manual_seed(0))
    delayed = apply_delay(codes, delay, BOS, PAD)

    assert delayed.shape == (*batch_shape, steps + max(delay), channels)
    assert torch.equal(revert_delay(delayed, delay), codes)
    for c, d in enumerate(delay):
        assert (delayed[..., :d, c] == BOS).all()
        assert torch.equal(delayed[..., d : d + steps, c], codes[..., c])
        assert (delayed[..., d + steps :, c] == PAD).all()


@pytest.mark.parametrize("delay", [DELAY, [0, 1, 2, 3], DELAY * 2], ids=["dia", "ramp", "stereo-18"])
def test_apply_delay_matches_processor(delay):
    size, steps, channels = 2, 12, len(delay)
    codes = torch.randint(0, 1024, (size, steps, channels), generator=torch.Generator().manual_seed(1))
    prefill = torch.cat([codes, torch.full((size, max(delay), channels), PAD)], dim=1)
    indices = DiaProcessor.build_indices(size, prefill.shape[1], channels, delay, revert=False)
    expected = DiaProcessor.apply_audio_delay(prefill, PAD, BOS, indices)
    assert torch.equal(apply_delay(codes, delay, BOS, PAD), expected)


# --- labels and shapes ------------------------------------------------------------------------------------


def expected_labels(codes: np.ndarray, steps: int, eos: bool) -> torch.Tensor:
    """Labels [steps, C] written out from the definition: target t is delayed row t + 1."""
    labels = torch.full((steps, CHANNELS), IGNORE_INDEX)
    for c, d in enumerate(DELAY):
        for t in range(steps):
            source = t - d  # the undelayed frame that delayed row t + 1 holds (row 0 of the sequence is BOS)
            if 0 <= source < len(codes):
                labels[t, c] = int(codes[source, c])
            elif source == len(codes) and eos:
                labels[t, c] = EOS
    return labels


def test_labels_are_codes_then_one_eos_with_specials_ignored():
    frames = [3, 10, 16]
    codes = [random_codes(n, seed=n) for n in frames]
    batch = collate(items_of(make_table(["[S1] a", "[S2] b", "[S1] c"], codes), max_audio_frames=16), 16)
    labels = batch["labels"]
    steps = labels.shape[1]

    assert (batch["decoder_input_ids"][:, 0] == BOS).all()
    assert not torch.isin(labels, torch.tensor([BOS, PAD])).any()
    for i, (n, item_codes) in enumerate(zip(frames, codes, strict=True)):
        assert torch.equal(labels[i], expected_labels(item_codes, steps, eos=True))
        for c, d in enumerate(DELAY):
            assert (labels[i, :, c] == EOS).nonzero().flatten().tolist() == [n + d]


def test_cropped_clip_has_no_eos_target():
    codes = random_codes(20, seed=3)
    [item] = items_of(make_table(["[S1] long"], [codes]), max_audio_frames=8)
    assert item["cropped"] and torch.equal(item["codes"], torch.from_numpy(codes[:8]).long())
    labels = collate([item], 8)["labels"]

    assert not (labels == EOS).any()
    assert torch.equal(labels[0], expected_labels(codes[:8], labels.shape[1], eos=False))


def test_fill_to_rows_have_no_targets():
    items = items_of(make_table(["[S1] a", "[S2] b"], [random_codes(5, 0), random_codes(9, 1)]), max_audio_frames=12)
    plain = collate(items, 12)
    filled = collate(items, 12, fill_to=4)

    assert filled["labels"].shape[0] == filled["decoder_input_ids"].shape[0] == filled["input_ids"].shape[0] == 4
    assert (filled["labels"][2:] == IGNORE_INDEX).all()
    for key in plain:
        assert torch.equal(filled[key][:2], plain[key])


@pytest.mark.parametrize("frames", [[1], [4, 30], [30, 30, 2]], ids=["one-short", "short-and-cropped", "three"])
def test_batch_shapes_do_not_depend_on_the_items(frames):
    texts = ["[S1] " + "x" * n for n in frames]
    codes = [random_codes(n, seed=n) for n in frames]
    batch = collate(items_of(make_table(texts, codes), max_audio_frames=24), 24, max_text_tokens=40)
    size = len(frames)
    audio_shape = (size, 24 + 1 + max(DELAY), CHANNELS)

    assert batch["input_ids"].shape == batch["attention_mask"].shape == (size, 40)
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == audio_shape
    assert all(v.dtype == torch.long for v in batch.values())


def test_text_longer_than_max_text_tokens_raises():
    items = items_of(make_table(["[S1] " + "y" * 40], [random_codes(4, 0)]), max_audio_frames=8)
    with pytest.raises(ValueError, match="max_text_tokens"):
        collate(items, 8, max_text_tokens=16)


# --- classifier-free guidance -----------------------------------------------------------------------------


def test_unconditional_items_have_zero_text_and_the_conditional_mask():
    [item] = items_of(make_table(["[S1] Guidance."], [random_codes(6, 0)]), max_audio_frames=8)
    conditional = collate([item, item], 8)
    mixed = collate([item, {**item, "unconditional": True}], 8)

    assert torch.equal(mixed["input_ids"][0], conditional["input_ids"][0])
    assert not mixed["input_ids"][1].any()
    assert torch.equal(mixed["attention_mask"], conditional["attention_mask"])
    for key in ("decoder_input_ids", "labels"):
        assert torch.equal(mixed[key], conditional[key])


def test_unconditional_text_is_what_generation_feeds_the_guidance_branch(tiny_dia):
    texts = ["[S1] Hello.", "[S2] A slightly longer line."]
    items = items_of(make_table(texts, [random_codes(3, 0), random_codes(5, 1)]), max_audio_frames=8)
    conditional = collate(items, 8, max_text_tokens=32)
    unconditional = collate([{**item, "unconditional": True} for item in items], 8, max_text_tokens=32)
    ids, mask = conditional["input_ids"], conditional["attention_mask"]
    assert torch.equal(unconditional_text(ids), torch.zeros_like(ids))

    seen = {}

    def capture(module, args, kwargs):
        seen.update(input_ids=kwargs["input_ids"], attention_mask=kwargs["attention_mask"])

    hook = tiny_dia.model.encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        tiny_dia.generate(input_ids=ids, attention_mask=mask, guidance_scale=3.0, max_new_tokens=1, do_sample=False)
    finally:
        hook.remove()
    # Generation stacks [conditional; unconditional]: zeroed ids with the conditional mask repeated.
    size = len(texts)
    assert torch.equal(seen["input_ids"][:size], ids)
    assert torch.equal(seen["input_ids"][size:], unconditional["input_ids"])
    assert torch.equal(seen["attention_mask"][size:], unconditional["attention_mask"])


def cfg_table(size: int) -> datasets.Dataset:
    return make_table([f"[S1] item {i}" for i in range(size)], [random_codes(2, 0)] * size)


def cfg_decisions(dataset: CodesDataset, epoch: int) -> list[bool]:
    dataset.set_epoch(epoch)
    return [bool(dataset[i]["unconditional"]) for i in range(len(dataset))]


def test_cfg_decisions_are_reproducible_per_epoch_and_match_the_fraction():
    table, cfg = cfg_table(2000), DataConfig(seed=1234)
    first = CodesDataset(table, cfg, 0.15, train=True)
    second = CodesDataset(table, cfg, 0.15, train=True)
    epoch0 = cfg_decisions(first, 0)

    assert cfg_decisions(second, 0) == epoch0
    assert cfg_decisions(first, 1) != epoch0
    assert abs(sum(epoch0) / len(epoch0) - 0.15) < 0.03
    assert not any(cfg_decisions(CodesDataset(table.select(range(200)), cfg, 0.15, train=False), 0))


_DECISIONS_SCRIPT = """
import json, sys
from datasets import load_from_disk
from dia_tpu.config import DataConfig, load
from dia_tpu.data.dataset import CodesDataset
ds = CodesDataset(load_from_disk(sys.argv[1]), DataConfig(seed=7), 0.5, train=True)
out = []
for epoch in (0, 1):
    ds.set_epoch(epoch)
    out.append([bool(ds[i]["unconditional"]) for i in range(len(ds))])
print(json.dumps(out))
"""


def test_cfg_decisions_agree_across_processes(tmp_path):
    """Another process (with another hash seed, as another rank may have) loads the table and agrees."""
    cfg_table(64).save_to_disk(str(tmp_path / "codes"))
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    done = subprocess.run(
        [sys.executable, "-c", _DECISIONS_SCRIPT, str(tmp_path / "codes")],
        env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout.strip().splitlines()[-1])
    here = CodesDataset(datasets.load_from_disk(str(tmp_path / "codes")), DataConfig(seed=7), 0.5, train=True)
    assert other == [cfg_decisions(here, 0), cfg_decisions(here, 1)]
    assert other[0] != other[1]


# --- cropping ---------------------------------------------------------------------------------------------


def ramp_table(frames: int) -> datasets.Dataset:
    """One clip whose code at frame t is t on every channel, so a window shows where it starts."""
    return make_table(["[S1] ramp"], [np.repeat(np.arange(frames)[:, None], CHANNELS, axis=1)])


def crop_starts(dataset: CodesDataset, epochs: range) -> list[int]:
    starts = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        window = dataset[0]["codes"]
        start = int(window[0, 0])
        assert len(window) == dataset.cfg.max_audio_frames
        assert torch.equal(window[:, 0], torch.arange(start, start + len(window)))
        starts.append(start)
    return starts


def test_random_crop_is_inside_the_clip_and_reproducible():
    table, cfg = ramp_table(40), DataConfig(max_audio_frames=10, random_crop=True, seed=5)
    starts = crop_starts(CodesDataset(table, cfg, 0.0, train=True), range(30))

    assert all(0 <= s <= 30 for s in starts)
    assert len(set(starts)) > 1
    assert crop_starts(CodesDataset(table, cfg, 0.0, train=True), range(30)) == starts


def test_crop_keeps_the_start_without_random_crop_or_in_eval():
    table = ramp_table(40)
    fixed = DataConfig(max_audio_frames=10, random_crop=False)
    random = DataConfig(max_audio_frames=10, random_crop=True)
    assert crop_starts(CodesDataset(table, fixed, 0.0, train=True), range(5)) == [0] * 5
    assert crop_starts(CodesDataset(table, random, 0.0, train=False), range(5)) == [0] * 5


# --- language tags ------------------------------------------------------------------------------------------


def test_language_tags_become_their_byte_and_other_tags_stay_text():
    tags = {"de": 3, "fr": 4}
    assert encode_text("[de] Hallo [S1] ok [xx] [fr]", tags) == [3, *b" Hallo ", 1, *b" ok [xx] ", 4]
    assert encode_text("[DE] [de-AT] x", tags) == list(b"[DE] [de-AT] x")  # matched exactly
    # Without the mapping (what generation passes today) the tag is plain text, as before.
    assert encode_text("[de] Hallo [S2]") == [*b"[de] Hallo ", 2] == encode_text("[de] Hallo [S2]", {})


def test_language_tags_reach_items_and_the_long_text_check():
    text = "[de] " + "x" * 10  # 11 tokens with the tag as one id, 15 without
    table = make_table([text], [random_codes(4, 0)])
    [item] = items_of(table, language_tags={"de": 3})
    assert item["text_ids"].tolist() == [3, *b" xxxxxxxxxx"]
    assert _filter_long_text(table, DataConfig(max_text_tokens=12, language_tags={"de": 3}), "t") == (table, 0)
    with pytest.raises(ValueError, match="15 tokens"):
        _filter_long_text(table, DataConfig(max_text_tokens=12), "t")


# --- music tag augmentation ---------------------------------------------------------------------------------

TAGS = "rock, electric guitar, 120 bpm, male vocals, live"


def test_tag_augmentation_is_seeded_keeps_a_tag_and_respects_the_limit():
    cfg = DataConfig(tag_shuffle=True, tag_dropout=0.5, tag_limit=3)
    outs = [augment_tags(TAGS, item_random(1, epoch, 0, "tags"), cfg) for epoch in range(300)]

    assert outs == [augment_tags(TAGS, item_random(1, epoch, 0, "tags"), cfg) for epoch in range(300)]
    for out in outs:
        kept = out.split(", ")
        assert 1 <= len(kept) <= 3 and len(set(kept)) == len(kept) and set(kept) <= set(split_tags(TAGS))
    assert len(set(outs)) > 30
    assert {len(out.split(", ")) for out in outs} == {1, 2, 3}
    # Dropping nearly everything still leaves one tag; without shuffling the order and the first tags stay.
    heavy = DataConfig(tag_dropout=0.99)
    assert all(augment_tags(TAGS, random.Random(i), heavy) in split_tags(TAGS) for i in range(100))
    assert augment_tags("a,b ,  c,", random.Random(0), DataConfig(tag_limit=2)) == "a, b"
    assert augment_tags(" , ", random.Random(0), cfg) == " , "  # no tags: left as it is


def tag_texts(dataset: CodesDataset, epochs: range) -> list[str]:
    texts = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        texts.append(bytes(dataset[0]["text_ids"].tolist()).decode())
    return texts


def test_tag_augmentation_applies_in_training_only_per_item_and_epoch():
    table = make_table([TAGS], [random_codes(3, 0)])
    cfg = DataConfig(tag_shuffle=True, tag_dropout=0.3, seed=5)
    texts = tag_texts(CodesDataset(table, cfg, 0.0, train=True), range(20))

    assert texts == tag_texts(CodesDataset(table, cfg, 0.0, train=True), range(20))
    assert len(set(texts)) > 5 and all(set(t.split(", ")) <= set(split_tags(TAGS)) for t in texts)
    assert tag_texts(CodesDataset(table, cfg, 0.0, train=False), range(5)) == [TAGS] * 5
    assert tag_texts(CodesDataset(table, DataConfig(seed=5), 0.0, train=True), range(5)) == [TAGS] * 5


def test_long_text_check_counts_the_longest_augmented_prompt():
    table = make_table(["a,bb,c"], [random_codes(3, 0)])  # 6 tokens; rejoined "a, bb, c" is 8
    assert _filter_long_text(table, DataConfig(max_text_tokens=7), "t") == (table, 0)
    with pytest.raises(ValueError, match="8 tokens"):
        _filter_long_text(table, DataConfig(max_text_tokens=7, tag_shuffle=True), "t")
    # At most two tags: the longest outcome is "bb, a" (5 tokens), so the prompt fits.
    assert _filter_long_text(table, DataConfig(max_text_tokens=7, tag_limit=2), "t")[1] == 0
