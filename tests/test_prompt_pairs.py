"""data.prompt_pairs: training items preceded by another clip of their speaker, built as generation builds a
voice prompt, with no loss on the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import DiaConfig

from dia_tpu.config import ConfigError, DataConfig, load
from dia_tpu.data.batching import IGNORE_INDEX, make_collator
from dia_tpu.data.dataset import CodesDataset
from dia_tpu.data.tokens import apply_delay, encode_text
from dia_tpu.generation.synthesize import VoicePrompt, script_for

CHANNELS = 9


def table() -> Dataset:
    rng = np.random.default_rng(0)
    frames = [5, 6, 10, 7, 30]
    return Dataset.from_dict(
        {
            "text": ["[S1] One.", "[S1] Two two.", "[S1] Three three three.", "[S2] Four.", "[S1] Five."],
            "codes": [rng.integers(0, 1024, size=(n, CHANNELS)).tolist() for n in frames],
            "frames": frames,
            "speaker": ["A", "A", "A", "B", "A"],
        }
    )


def items(prompt_pairs: float, train: bool = True, epoch: int = 0) -> list[dict]:
    cfg = DataConfig(max_audio_frames=24, max_text_tokens=64, prompt_pairs=prompt_pairs, prompt_max_frames=8)
    dataset = CodesDataset(table(), cfg, 0.0, train=train)
    dataset.set_epoch(epoch)
    return [dataset[i] for i in range(len(dataset))]


def test_an_item_is_prompted_by_a_short_clip_of_its_speaker_each_epoch_anew():
    rows = table()
    for epoch in range(3):
        for i, item in enumerate(items(1.0, epoch=epoch)):
            p = item["prompt_frames"]
            if rows[i]["speaker"] == "B":  # no other clip of B
                assert p == 0
                continue
            # A prompt is a whole other clip of A of at most 8 frames: #0 (5) or #1 (6), never itself.
            choices = {5: 0, 6: 1}
            assert p in choices and choices[p] != i
            partner = rows[choices[p]]
            assert torch.equal(item["codes"][:p], torch.tensor(partner["codes"]))
            own = torch.tensor(rows[i]["codes"])[: 24 - p]
            assert torch.equal(item["codes"][p:], own) and item["cropped"] == (len(rows[i]["codes"]) > 24 - p)
            assert item["text_ids"].tolist() == encode_text(f"{partner['text']} {rows[i]['text']}")
    # Seeded: the same epoch gives the same prompts; none without the option, none for evaluation.
    assert [x["prompt_frames"] for x in items(1.0, epoch=1)] == [x["prompt_frames"] for x in items(1.0, epoch=1)]
    assert all(x["prompt_frames"] == 0 for x in items(0.0) + items(1.0, train=False))
    # A fraction: about half of the A items over many epochs.
    prompted = sum(x["prompt_frames"] > 0 for e in range(40) for x in items(0.5, epoch=e))
    assert 0.3 < prompted / (40 * 4) < 0.7


def test_the_prompt_carries_no_loss_and_its_inputs_are_what_generation_builds():
    config = DiaConfig()
    dec, delay = config.decoder_config, list(config.delay_pattern)
    collate = make_collator(DataConfig(max_audio_frames=24, max_text_tokens=64), config)
    prompted = items(1.0)[2]  # "[S1] Three three three.", 10 frames, after #0 or #1
    plain = items(0.0)[2]
    p = prompted["prompt_frames"]
    a, b = collate([prompted]), collate([plain])
    # Loss: exactly the item's own targets, at the same values, p frames later; nothing of the prompt.
    counted_a, counted_b = a["labels"] != IGNORE_INDEX, b["labels"] != IGNORE_INDEX
    assert counted_a.sum() == counted_b.sum() == (10 + 1) * CHANNELS  # its frames and its EOS
    assert torch.equal(a["labels"][0, p : p + 10 + 1 + max(delay)], b["labels"][0, : 10 + 1 + max(delay)])
    assert not counted_a[0, :p].any()
    # Inputs: the text and the delayed prompt rows are what `generate --audio-prompt` feeds for this prompt.
    partner = table()[{5: 0, 6: 1}[p]]
    prompt = VoicePrompt(codes=torch.tensor(partner["codes"]), transcript=partner["text"])
    script = script_for(table()[2]["text"], prompt)
    assert a["input_ids"][0, : len(encode_text(script))].tolist() == encode_text(script)
    known = torch.cat([torch.full((1, CHANNELS), dec.bos_token_id), prompt.codes])
    prefix = apply_delay(known, delay, dec.bos_token_id, dec.pad_token_id)
    given = prefix != dec.pad_token_id  # the rest, generation produces
    assert torch.equal(a["decoder_input_ids"][0, : len(prefix)][given], prefix[given])


def test_bad_prompt_settings_are_named():
    with pytest.raises(ConfigError) as err:
        load(None, ["data.prompt_pairs=1.5", "data.prompt_max_frames=9999", "model.pretrained=org/dia"])
    assert "data.prompt_pairs" in str(err.value) and "data.prompt_max_frames" in str(err.value)
    with pytest.raises(ConfigError, match="not with data.buckets"):
        load(None, ["data.prompt_pairs=0.5", "data.buckets=[128]", "model.pretrained=org/dia"])
