"""Sampling in Dia's decoding: temperature, top-k and top-p, one draw per channel from each item's own seeded
generator, run after Dia's guidance and EOS rules (as the last logits processor of transformers' `generate`, or
the last step of dia_tpu's loop)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import DiaForConditionalGeneration, LogitsProcessor
from transformers.utils import logging as hf_logging

from dia_tpu.console import DropNote

# generate() runs with do_sample=False (sampling is a processor here), so transformers flags `top_k` as unused;
# Dia's guidance step does read it.
hf_logging.get_logger("transformers.generation.configuration_utils").addFilter(
    DropNote("flags are not valid and may be ignored: ['top_k']")
)


class SeededSampler(LogitsProcessor):
    """Temperature, top-k and top-p, then one draw per channel from the item's own generator.

    It runs after Dia's processors, which decide EOS from each row's argmax and force the delayed
    channels' EOS/PAD; those rows arrive with one finite score, so the draw keeps them. Every other
    score is set to -inf, so an argmax over the result returns the draw.

    The draw works on the candidates alone, best first (Dia's guidance leaves at most top_k finite scores
    anyway): one uniform number per channel, looked up in their cumulative probabilities. That is the same
    distribution as a multinomial draw over the whole vocabulary, for a fraction of its cost.
    """

    def __init__(self, seeds: list[int], channels: int, settings):
        self.seeds, self.channels, self.settings = seeds, channels, settings
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(seed) for seed in self.seeds]
        logits = scores.float() / s.temperature
        vocab = logits.shape[-1]
        values, tokens = torch.topk(logits, s.top_k if 0 < s.top_k < vocab else vocab, dim=-1)  # sorted
        probs = values.softmax(-1)
        if s.top_p < 1.0:
            # Drop a token once the tokens ranked above it already hold top_p; the best one always stays.
            probs = values.masked_fill(probs.cumsum(-1) - probs >= s.top_p, -float("inf")).softmax(-1)
        cumulative = probs.cumsum(-1)
        uniform = torch.cat([torch.rand(self.channels, 1, generator=g, device=scores.device) for g in self.generators])
        pick = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
        # Rounding can put the number at the very end: take the last candidate with any probability.
        pick = torch.minimum(pick, (probs > 0).sum(-1, keepdim=True) - 1)
        return torch.full_like(scores, -float("inf")).scatter(-1, tokens.gather(-1, pick), 0.0)


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
