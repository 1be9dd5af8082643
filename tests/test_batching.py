"""Length-bucketed batching: the sampler's epochs, the collator's bucket shapes, sharding over processes,
the padding report, and a bucketed training run that resumes exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from conftest import RANDOM_CODEC, ROOT, reset_accelerate, tiny, weights
from test_data import BOS, DELAY, IGNORE_INDEX, PAD, make_table, random_codes
from torch.utils.data import DataLoader
from transformers import DiaConfig

from dia_tpu.config import DataConfig
from dia_tpu.data.batching import BucketBatchSampler, bucket_lengths, bucket_of, make_collator, padding_report
from dia_tpu.data.dataset import CodesDataset, load_splits
from dia_tpu.errors import UserError
from dia_tpu.training.loaders import make_loaders, positioned_batches
from dia_tpu.training.recipe import train
from dia_tpu.training.state import TrainState

MAX_FRAMES = 48
LENGTHS = [8, 16, 32, MAX_FRAMES]  # data.buckets=[8, 16, 32] with max_audio_frames=48
DELAY_ROWS = 1 + max(DELAY)  # the EOS row and the delay tail past the padded frames (BOS drops out of the inputs)


def uneven_frames(count: int, seed: int = 0) -> list[int]:
    """Clip lengths from 1 frame to past max_audio_frames (cropped clips fall in the last bucket)."""
    return [int(n) for n in np.random.default_rng(seed).integers(1, MAX_FRAMES + 20, count)]


def uneven_dataset(count: int) -> CodesDataset:
    codes = [random_codes(n, seed=i) for i, n in enumerate(uneven_frames(count))]
    table = make_table([f"[S1] item {i}" for i in range(count)], codes)
    cfg = DataConfig(max_audio_frames=MAX_FRAMES, buckets=LENGTHS[:-1], max_text_tokens=16)
    return CodesDataset(table, cfg, 0.0, train=True)


def smallest_fit(frames: int) -> int:
    return min(length for length in LENGTHS if length >= min(frames, MAX_FRAMES))


def epoch_batches(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


# --- the sampler ------------------------------------------------------------------------------------------


def test_batches_are_full_come_from_the_smallest_bucket_and_use_items_once():
    dataset = uneven_dataset(300)
    frames = dataset.frames()
    assert frames == [min(n, MAX_FRAMES) for n in uneven_frames(300)]
    sampler = BucketBatchSampler(frames, LENGTHS, batch_size=4, seed=3)
    batches = epoch_batches(sampler, 0)

    assert len(batches) == len(sampler)
    assert all(len(batch) == 4 for batch in batches)
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))
    for batch in batches:
        assert len({smallest_fit(frames[i]) for i in batch}) == 1
    # Only each bucket's remainder (fewer than a batch) sits the epoch out.
    for length in LENGTHS:
        members = [i for i, n in enumerate(frames) if smallest_fit(n) == length]
        taken = [i for i in used if smallest_fit(frames[i]) == length]
        assert len(taken) == len(members) // 4 * 4 and len(members) > 4


def test_order_depends_only_on_the_seed_and_the_epoch():
    frames = [min(n, MAX_FRAMES) for n in uneven_frames(200)]
    first = BucketBatchSampler(frames, LENGTHS, 4, seed=3)
    second = BucketBatchSampler(frames, LENGTHS, 4, seed=3)
    epoch0 = epoch_batches(first, 0)

    assert epoch_batches(second, 0) == epoch0
    assert list(first) == epoch0  # iterating does not move the epoch on; only set_epoch does
    assert epoch_batches(first, 1) != epoch0
    assert epoch_batches(BucketBatchSampler(frames, LENGTHS, 4, seed=4), 0) != epoch0
    assert len(first) == len(epoch_batches(first, 7))


def test_collated_shapes_are_the_bucket_lengths_only():
    dataset = uneven_dataset(120)
    sampler = BucketBatchSampler(dataset.frames(), LENGTHS, batch_size=3, seed=1)
    collate = make_collator(dataset.cfg, DiaConfig(), bucketed=True)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    seen = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for indices, batch in zip(list(sampler), loader, strict=True):
            steps = smallest_fit(max(dataset.frames()[i] for i in indices)) + DELAY_ROWS
            assert batch["decoder_input_ids"].shape == batch["labels"].shape == (3, steps, len(DELAY))
            assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 16)
            seen.add(steps)
    assert seen == {length + DELAY_ROWS for length in LENGTHS}


def test_bucketed_batch_is_the_full_length_batch_cut_to_its_bucket():
    frames = [3, 13, 9]
    table = make_table([f"[S2] clip {n}" for n in frames], [random_codes(n, seed=n) for n in frames])
    cfg = DataConfig(max_audio_frames=MAX_FRAMES, buckets=LENGTHS[:-1], max_text_tokens=24)
    dataset = CodesDataset(table, cfg, 0.0, train=False)
    items = [dataset[i] for i in range(len(dataset))]
    for fill_to in (0, 5):
        full = make_collator(cfg, DiaConfig(), fill_to)(items)
        bucketed = make_collator(cfg, DiaConfig(), fill_to, bucketed=True)(items)
        steps = 16 + DELAY_ROWS
        assert bucketed["decoder_input_ids"].shape[1] == steps
        assert full["decoder_input_ids"].shape[1] == MAX_FRAMES + DELAY_ROWS
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(bucketed[key], full[key])
        # Every real input and target lies inside the bucket; past it the full batch has only padding.
        for key in ("decoder_input_ids", "labels"):
            assert torch.equal(bucketed[key], full[key][:, :steps])
        assert (full["decoder_input_ids"][:, steps:] == PAD).all()
        assert (full["labels"][:, steps:] == IGNORE_INDEX).all()
        assert (bucketed["decoder_input_ids"][:, 0] == BOS).all()


def test_collator_names_a_clip_longer_than_every_length():
    item = uneven_dataset(1)[0]
    collate = make_collator(DataConfig(max_audio_frames=4, max_text_tokens=16), DiaConfig(), bucketed=True)
    with pytest.raises(ValueError, match="max_audio_frames"):
        collate([{**item, "codes": torch.zeros(9, len(DELAY), dtype=torch.long)}])
    with pytest.raises(ValueError, match="above max_audio_frames=8"):
        bucket_lengths([4, 16], 8)
    assert bucket_lengths([], 8) == [8] and bucket_lengths([8, 4], 8) == [4, 8] and bucket_of(5, [4, 8]) == 8


# --- several processes ------------------------------------------------------------------------------------


def test_processes_split_each_epoch_share_each_step_bucket_and_resume_mid_epoch():
    """Through Accelerate's own sharding and skip_first_batches, as `prepare` and a resume use them."""
    frames = [min(n, MAX_FRAMES) for n in uneven_frames(160)]
    sampler = BucketBatchSampler(frames, LENGTHS, batch_size=2, seed=5, num_processes=2)
    assert len(sampler) % 2 == 0
    accelerator = Accelerator(cpu=True)

    def stream(rank: int, state: TrainState) -> list[list[int]]:
        loader = DataLoader(range(len(frames)), batch_sampler=sampler, collate_fn=list)
        shard = prepare_data_loader(loader, num_processes=2, process_index=rank, use_seedable_sampler=True)
        assert len(shard) == len(sampler) // 2
        return [batch for _, batch in islice(positioned_batches(accelerator, shard, [sampler], state), 2 * len(shard))]

    ranks = [stream(rank, TrainState()) for rank in (0, 1)]
    per_epoch = len(sampler) // 2
    for epoch in (0, 1):
        expected = epoch_batches(sampler, epoch)
        got = [rank[epoch * per_epoch : (epoch + 1) * per_epoch] for rank in ranks]
        assert got[0] == expected[0::2] and got[1] == expected[1::2]
        for a, b in zip(*got, strict=True):
            assert smallest_fit(frames[a[0]]) == smallest_fit(frames[b[0]])
    assert ranks[0][:per_epoch] != ranks[0][per_epoch:]

    # A resume three batches into epoch 1 continues with exactly the batches the straight run had.
    for rank in (0, 1):
        resumed = stream(rank, TrainState(epoch=1, batches_in_epoch=3))
        assert resumed[: per_epoch - 3] == ranks[rank][per_epoch + 3 :]


# --- the training loader and the padding report -----------------------------------------------------------


@pytest.fixture(scope="module")
def short_codes(codes_dir, tmp_path_factory) -> Path:
    """The bundled sample with its clips cut to 4-48 frames (seeded), so they spread over the buckets."""
    table = datasets.load_from_disk(str(codes_dir))
    cut = [int(n) for n in np.random.default_rng(0).integers(4, 49, len(table))]
    table = table.map(lambda row, i: {"codes": row["codes"][: cut[i]], "frames": cut[i]}, with_indices=True)
    out = tmp_path_factory.mktemp("short") / "codes"
    table.save_to_disk(str(out))
    # What `prepare` writes beside the table (its manifest: codec identity, codebooks) goes along.
    for path in codes_dir.iterdir():
        if path.is_file() and path.suffix != ".arrow" and not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    return out


BUCKETS = "data.buckets=[16, 32]"


def _collators(cfg, model_config) -> tuple:
    return make_collator(cfg.data, model_config, bucketed=True), make_collator(
        cfg.data, model_config, cfg.eval.batch_size
    )


def test_training_loader_counts_bucket_batches(short_codes, tmp_path):
    cfg = tiny(short_codes, tmp_path, BUCKETS)
    splits = load_splits(cfg)
    model_config = DiaConfig(**cfg.model.architecture)
    for processes in (1, 2):
        loader, eval_loader, seeded = make_loaders(cfg, splits, _collators(cfg, model_config), processes)
        [sampler] = [part for part in seeded if isinstance(part, BucketBatchSampler)]
        assert seeded[0] is splits.train
        assert len(loader) == len(sampler) and len(loader) % processes == 0
        # Evaluation keeps one shape, max_audio_frames.
        assert {b["labels"].shape[1] for b in eval_loader} == {MAX_FRAMES + DELAY_ROWS}
    with pytest.raises(ValueError, match=r"no full batch of 20 within one of the lengths \[16, 32, 48\]"):
        make_loaders(
            tiny(short_codes, tmp_path, BUCKETS, "train.batch_size=20"), splits, _collators(cfg, model_config), 1
        )


def test_padding_report_script(short_codes):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/padding_report.py"),
            "--config",
            str(ROOT / "configs/demo.yaml"),
            f"data.dataset={short_codes}",
            "data.max_audio_frames=48",
            "train.batch_size=2",
            BUCKETS,
            *RANDOM_CODEC,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "without buckets: padding" in done.stdout and "lengths [16, 32, 48]" in done.stdout


def test_padding_report_counts_padded_frames(short_codes, tmp_path):
    cfg = tiny(short_codes, tmp_path, BUCKETS, "train.batch_size=1")
    frames = load_splits(cfg).train.frames()
    report = padding_report(cfg)
    # Batches of one item: every item is used, and the padding follows from its length alone.
    assert report["without_buckets"]["items_used"] == report["with_buckets"]["items_used"] == len(frames)
    assert report["without_buckets"]["padding"] == pytest.approx(1 - sum(frames) / (MAX_FRAMES * len(frames)))
    padded = sum(bucket_of(n, [16, 32, MAX_FRAMES]) for n in frames)
    assert report["with_buckets"]["padding"] == pytest.approx(1 - sum(frames) / padded)
    assert report["with_buckets"]["padding"] < report["without_buckets"]["padding"]


# --- a bucketed run -------------------------------------------------------------------------------------------


def test_bucketed_training_resumes_exactly(short_codes, tmp_path):
    common = [BUCKETS, "train.max_steps=16", "train.save_every=8", "eval.eval_every=8", "train.report_to=none"]
    straight = tmp_path / "straight"
    cfg = tiny(short_codes, straight, *common)
    train(cfg)
    # Step 8 is inside the first epoch and the run crosses into the second, with several shapes in play.
    batches = len(BucketBatchSampler(load_splits(cfg).train.frames(), [16, 32, MAX_FRAMES], 2, cfg.data.seed))
    assert 8 < batches < 16

    reset_accelerate()
    resumed = tmp_path / "resumed"
    train(tiny(short_codes, resumed, *common, f"train.resume={straight / 'checkpoints' / 'step_8'}"))
    expected, got = weights(straight), weights(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_an_epoch_that_gives_no_batch_stops_the_run_in_one_line():
    """What an XLA loader whose thread died on a bad item gives: an empty epoch, which must not start another."""
    from accelerate import Accelerator

    from dia_tpu.training.state import TrainState

    class Empty(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    stream = positioned_batches(Accelerator(cpu=True), Empty(), [], TrainState())
    with pytest.raises(UserError, match="epoch 0 gave no training batch"):
        next(stream)
