"""Sampling in Dia's decoding: temperature, top-k and top-p, one draw per channel from each item's own seeded
generator, run after Dia's guidance and EOS rules (as the last logits processor of transformers' `generate`, or
the last step of dia_tpu's loop)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from transformers import DiaForConditionalGeneration, LogitsProcessor
from transformers.utils import logging as hf_logging


class _TopKIsUsed(logging.Filter):
    """generate() runs with do_sample=False (sampling is a processor here), so transformers flags `top_k` as
    unused; Dia's guidance step does read it, and the warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "flags are not valid and may be ignored: ['top_k']" not in record.getMessage()


hf_logging.get_logger("transformers.generation.configuration_utils").addFilter(_TopKIsUsed())


class SeededSampler(LogitsProcessor):
    """Temperature, top-k and top-p, then one draw per channel from the item's own generator.

    It runs after Dia's processors, which decide EOS from each row's argmax and force the delayed
    channels' EOS/PAD; those rows arrive with one finite score, so the draw keeps them. Every other
    score is set to -inf, so generate's argmax returns the draw.
    """

    def __init__(self, seeds: list[int], channels: int, settings):
        self.seeds, self.channels, self.settings = seeds, channels, settings
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(seed) for seed in self.seeds]
        logits = scores.float() / s.temperature
        if 0 < s.top_k < logits.shape[-1]:
            kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        if s.top_p < 1.0:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            # Drop a token once the tokens ranked above it already hold top_p; the best one always stays.
            drop = cumulative - ordered.softmax(-1) >= s.top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -float("inf"))
        probs = logits.softmax(-1).view(len(self.seeds), self.channels, -1)
        picks = torch.stack(
            [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
        ).view(-1, 1)
        return torch.full_like(scores, -float("inf")).scatter(-1, picks, 0.0)


@contextlib.contextmanager
def appended_to_processors(model: DiaForConditionalGeneration, processor: LogitsProcessor | None) -> Iterator[None]:
    """Run `processor` last in Dia's logits processors for the calls made inside the block.

    Dia's generate builds its processor list itself and drops a `logits_processor` argument, so the
    sampler is appended to the list its own builder returns, on this instance only and only while
    the block runs.
    """
    if processor is None:
        yield
        return
    build = model._get_logits_processor

    def with_processor(*args, **kwargs):
        processors = build(*args, **kwargs)
        processors.append(processor)
        return processors

    model._get_logits_processor = with_processor
    try:
        yield
    finally:
        del model._get_logits_processor
