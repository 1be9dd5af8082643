"""The training and evaluation loaders: fixed shapes (or a few length buckets), seeded epoch order, and the
endless micro-batch stream that resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

from accelerate import Accelerator
from torch.utils.data import DataLoader

from dia_tpu.config import Config
from dia_tpu.data.batching import BucketBatchSampler, bucket_lengths
from dia_tpu.errors import UserError
from dia_tpu.training.state import TrainState


def make_loaders(
    cfg: Config, splits, collators: tuple, num_processes: int
) -> tuple[DataLoader, DataLoader | None, list]:
    """Fixed-shape loaders: training drops its last partial batch (per length bucket with data.buckets),
    evaluation pads to max_audio_frames and fills its last batch with ignored rows. `collators`: the family's
    for training (bucketed) and for evaluation (filled to eval.batch_size). Also returns what
    `positioned_batches` sets the epoch of: the training dataset, and the bucket batch sampler if any."""
    d, batch_size = cfg.data, cfg.train.batch_size
    collate, eval_collate = collators
    if d.buckets:
        lengths = bucket_lengths(d.buckets, d.max_audio_frames)
        sampler = BucketBatchSampler(splits.train.frames(), lengths, batch_size, d.seed, num_processes)
        train_loader = DataLoader(splits.train, batch_sampler=sampler, collate_fn=collate, num_workers=d.num_workers)
        epoch_seeded = [splits.train, sampler]
        within = f" within one of the lengths {lengths} (data.buckets)"
    else:
        train_loader = DataLoader(
            splits.train,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate,
            num_workers=d.num_workers,
        )
        epoch_seeded = [splits.train]
        within = ""
    if len(train_loader) < num_processes:
        raise UserError(
            f"{d.dataset}: {len(splits.train)} training items make no full batch of {batch_size}{within} "
            f"on each of {num_processes} processes"
        )
    if splits.eval is None:
        return train_loader, None, epoch_seeded
    eval_loader = DataLoader(
        splits.eval,
        batch_size=cfg.eval.batch_size,
        collate_fn=eval_collate,
        num_workers=d.num_workers,
    )
    return train_loader, eval_loader, epoch_seeded


def positioned_batches(
    accelerator: Accelerator, loader, epoch_seeded: list, start: TrainState
) -> Iterator[tuple[tuple[int, int], dict]]:
    """Endless micro-batches in seeded epoch order, starting where `start` says (after a resume, mid-epoch), each
    with the data position after it: (epoch, micro-batches of that epoch consumed).

    `start` is only read: the loop advances the training state's position with the batches it takes, so what a
    checkpoint saves is what the loop has taken. The dataset and the bucket sampler get the epoch here rather than
    through `loader.set_epoch`: on several processes Accelerate wraps a custom batch sampler in a
    BatchSamplerShard, which that call does not reach.
    """
    epoch, skip = start.epoch, start.batches_in_epoch
    while True:
        loader.set_epoch(epoch)
        for part in epoch_seeded:
            part.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        consumed = skip
        for consumed, batch in enumerate(batches, start=skip + 1):
            yield (epoch, consumed), batch
        if consumed == 0:
            # On XLA an item that fails to load ends the loader's thread (its error printed above) and the epoch
            # comes out empty; going on would start epoch after empty epoch for ever.
            raise UserError(f"epoch {epoch} gave no training batch: loading the data failed (see above)")
        epoch, skip = epoch + 1, 0
