"""dia_tpu's decoding loop: what transformers' Dia `generate` computes, step for step, without the bookkeeping a
general-purpose `generate` does around each step.

Each step calls the same modules with the same inputs and masks as `generate` does, applies Dia's guidance and
EOS rules with the same tensor operations, draws with the same sampler and writes the token where `generate`
writes it; tests hold the two equal token for token. What it leaves out: rebuilding the delayed sequence and
its masks from the whole history every step, the model wrappers' per-call checks, a general list of logits
processors and stopping criteria, and the growing concatenation of the sequence. At batch 1 on a CPU that
bookkeeping is a sixth of generate's step (`dia-tpu bench --task generate` measures both).
"""

from __future__ import annotations

import copy

import torch
from transformers import DiaForConditionalGeneration, LogitsProcessor
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

NEG_INF = -float("inf")
# The logits processors transformers' Dia generate builds for dia_tpu's settings; the loop applies these three.
DIA_PROCESSORS = {
    "DiaClassifierFreeGuidanceLogitsProcessor",
    "DiaEOSChannelFilterLogitsProcessor",
    "DiaEOSDelayPatternLogitsProcessor",
}


def processors_beyond_dia(
    model: DiaForConditionalGeneration, guidance_scale: float | None, top_k: int | None
) -> list[str]:
    """The logits processors generate would add for this model's own generation config (a repetition penalty
    saved with a checkpoint, say) beyond the three the loop applies: with any, only generate gives its tokens."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=top_k, guidance_scale=guidance_scale, max_length=2)
    device = next(model.parameters()).device
    text = torch.zeros(1, 1, dtype=torch.long, device=device)
    built = model._get_logits_processor(config, input_ids_seq_length=1, encoder_input_ids=text, device=device)
    return [type(p).__name__ for p in built if type(p).__name__ not in DIA_PROCESSORS]


@torch.no_grad()
def generate_delayed(
    model: DiaForConditionalGeneration,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prefix: torch.Tensor,
    max_new_tokens: int,
    guidance_scale: float | None,
    top_k: int | None,
    sampler: LogitsProcessor | None = None,
    check_every: int | None = None,
) -> torch.Tensor:
    """Delayed codes [B, T, C], equal to `model.generate(input_ids=ids, attention_mask=mask,
    decoder_input_ids=prefix, decoder_attention_mask=ones, max_new_tokens=..., do_sample=False,
    guidance_scale=..., top_k=...)` with `sampler` run after Dia's own logits processors.

    ids, mask: [B, S] text bytes and their padding mask. prefix: [B, P, C] the delayed start (BOS rows, any
    prompt's codes, then PAD where the model takes over); every item shares its PAD layout.
    check_every: steps between looks at whether every item has ended, which make the host wait for the device
    (default: every step on a CPU, where nothing runs ahead, else every 8); steps run past the end are cut off.
    """
    dec_cfg, gen_cfg = model.config.decoder_config, model.generation_config
    delay = list(model.config.delay_pattern)
    batch, channels, vocab = ids.shape[0], len(delay), dec_cfg.vocab_size
    eos_ids = torch.as_tensor(gen_cfg.eos_token_id, device=ids.device).view(-1)
    eos = dec_cfg.eos_token_id
    fill = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else int(eos_ids[0])
    guided = guidance_scale is not None and guidance_scale != 1
    halves = 2 if guided else 1

    decoder = model.model.decoder
    text = torch.cat([ids, torch.zeros_like(ids)]) if guided else ids
    text_mask = mask.repeat(2, 1) if guided else mask
    encoded = model.model.encoder(input_ids=text, attention_mask=text_mask).last_hidden_state

    # generate starts from the rows every channel knows (channel 0 is not PAD) and forces the rest as it goes.
    known = prefix.shape[1] - int((prefix[:, :, 0] == dec_cfg.pad_token_id).sum(-1).max())
    max_length = known + max_new_tokens
    tokens = torch.empty(batch, max_length, channels, dtype=torch.long, device=ids.device)
    tokens[:, :known] = prefix[:, :known]
    length = known
    rules = _DelayedEos(delay, eos, batch, max_length - max(delay) - 1, ids.device)
    unfinished = torch.ones(batch * channels, dtype=torch.long, device=ids.device)
    # going[t]: some row had not ended after position t was written.
    going = torch.ones(max_length, dtype=torch.bool, device=ids.device)
    check_every = check_every or (1 if ids.device.type == "cpu" else 8)
    cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))

    step_in = tokens[:, :known].repeat(halves, 1, 1)
    hidden = decoder(
        input_ids=step_in,
        attention_mask=torch.ones(step_in.shape[:2], dtype=torch.long, device=ids.device),
        encoder_hidden_states=encoded,
        encoder_attention_mask=text_mask,
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    # Every row's logits, as generate computes them, then the last: the product's shape decides its rounding.
    logits = model.logits_dense(hidden)[:, -1]
    next_row = _OneRow(model, encoded, text_mask, cache)
    while True:
        scores = logits.reshape(halves * batch * channels, vocab).float()
        if guided:
            scores = _guide(scores, guidance_scale, top_k)
        _filter_eos(scores.view(batch, channels, vocab), eos)
        rules(scores.view(batch, channels, vocab), length)
        if sampler is not None:
            scores = sampler(None, scores)
        drawn = scores.argmax(-1) * unfinished + fill * (1 - unfinished)
        tokens[:, length] = drawn.view(batch, channels)
        length += 1
        unfinished = unfinished * ~torch.isin(drawn, eos_ids)
        going[length - 1] = unfinished.any()
        if length >= max_length or (length - known) % check_every == 0:
            ended = (~going[known:length]).nonzero()
            if len(ended):
                length = known + int(ended[0]) + 1
                break
            if length >= max_length:
                break
        # The next input: the new row, with what the prefix already knows forced in (a prompt's delayed codes).
        row = tokens[:, length - 1]
        if length - 1 < prefix.shape[1]:
            given = prefix[:, length - 1]
            row = torch.where(given == dec_cfg.pad_token_id, row, given)
        logits = next_row(row[:, None].repeat(halves, 1, 1), length - 1)

    out = tokens[:, :length].clone()
    return model.apply_delay_mask(out, dec_cfg.pad_token_id, prefix)


class _OneRow:
    """Logits [N, C * V] for one new row [N, 1, C] at a position: Dia's decoder forward with its cache, its layers
    called directly with the masks its forward would build."""

    def __init__(self, model: DiaForConditionalGeneration, encoded: torch.Tensor, text_mask: torch.Tensor, cache):
        self.model, self.decoder, self.cache = model, model.model.decoder, cache
        self.encoded, self.text_mask = encoded, text_mask
        self.cross_mask = None

    def __call__(self, row: torch.Tensor, position: int) -> torch.Tensor:
        decoder = self.decoder
        hidden = decoder.embeddings(row)
        positions = torch.arange(position, position + 1, device=row.device)[None]
        # None for SDPA and flash attention; eager attention needs it every step. No padding mask: the decoder's
        # rows are all real, and reading one to find that out would make the host wait for the device.
        self_mask = create_causal_mask(decoder.config, hidden, attention_mask=None, cache=self.cache)
        if self.cross_mask is None:  # the text's padding, the same for every one-row step
            self.cross_mask = create_bidirectional_mask(
                config=decoder.config,
                inputs_embeds=hidden,
                attention_mask=self.text_mask,
                encoder_hidden_states=self.encoded,
            )
        rope = decoder.rotary_emb(hidden, position_ids=positions)
        for layer in decoder.layers:
            hidden = layer(
                hidden,
                rope,
                self_mask,
                self.encoded,
                encoder_attention_mask=self.cross_mask,
                cache=self.cache,
                position_ids=positions,
            )
        return self.model.logits_dense(decoder.norm(hidden))[:, -1]


def _guide(scores: torch.Tensor, scale: float, top_k: int | None) -> torch.Tensor:
    """[2N, V] conditional then unconditional scores to [N, V]: Dia's classifier-free guidance, whose top-k
    picks tokens by the guided scores but keeps their conditional scores."""
    cond, uncond = scores.split(scores.shape[0] // 2)
    guided = cond + (cond - uncond) * scale
    if top_k is None:
        return guided
    keep = torch.topk(guided, k=top_k, dim=-1).indices
    return cond.masked_fill(torch.ones_like(guided, dtype=torch.bool).scatter(-1, keep, False), NEG_INF)


def _filter_eos(scores: torch.Tensor, eos: int) -> None:
    """In place on [B, C, V]: only channel 0 may end the audio, no channel may emit the ids after EOS (PAD,
    BOS); a row whose best token is EOS keeps only EOS, any other row loses it."""
    scores[:, 1:, eos:] = NEG_INF
    scores[:, 0, eos + 1 :] = NEG_INF
    flat = scores.view(-1, scores.shape[-1])
    ends = flat.argmax(-1) == eos
    flat[:, :eos].masked_fill_(ends[:, None], NEG_INF)
    flat[:, eos].masked_fill_(~ends, NEG_INF)


class _DelayedEos:
    """Once channel 0 ends an item (or the length limit is reached), channel c emits its EOS delay[c] steps
    later: Dia's delay pattern applied to the end of the audio."""

    def __init__(self, delay: list[int], eos: int, batch: int, limit: int, device: torch.device):
        self.left = torch.tensor(delay, dtype=torch.int, device=device)[None].repeat(batch, 1)
        self.ended = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos, self.limit = eos, limit

    def __call__(self, scores: torch.Tensor, length: int) -> None:
        """In place on [B, C, V], before the token at sequence position `length` is chosen."""
        self.ended |= scores[:, 0].argmax(-1) == self.eos
        if length == self.limit:
            self.ended[:] = True
        forced = self.ended[:, None] & (self.left == 0)
        scores.masked_fill_(forced[..., None], NEG_INF)
        scores[..., self.eos].masked_fill_(forced, 0.0)
        self.left -= self.ended[:, None].int()
