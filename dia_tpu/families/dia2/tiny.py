"""A tiny randomly initialised Dia2, as a folder in upstream's format with its assets inside: for the demo
(`make demo-dia2`, which fine-tunes it on the bundled sample) and for tests. Nothing here is a pretrained model.

- the tokenizer: word-level over the words it is given (as a script splits them, on spaces), with upstream's
  special ids (pad, new word, zero) and `[S1]`/`[S2]`;
- the codec: a small random `MimiModel` (24 kHz, 12.5 frames a second, as Kyutai's) whose codebooks are drawn
  far apart, so that different codes decode to different sounds; its codes mean nothing;
- the model: `config.json` in upstream's layout and seeded random weights.

    python -m dia_tpu.families.dia2.tiny OUT --words SOURCE   (the words of SOURCE's transcripts, as prepare reads it)
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dia_tpu.config import PrepareConfig
from dia_tpu.data.sources import read_clips
from dia_tpu.families.dia2.config import parse_config
from dia_tpu.families.dia2.files import write_model
from dia_tpu.families.dia2.model import Dia2Model

# Upstream's reserved text ids below the words: <unk> 0, <bos> 1, pad 3, new word 4, [S1] 5, [S2] 6, zero 7.
SPECIAL = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3, "<new_word>": 4, "[S1]": 5, "[S2]": 6, "<zero>": 7}
_STACK = {"gqa_query_heads": 4, "kv_heads": 2, "gqa_head_dim": 16}
DEMO = {
    "data": {
        "action_vocab_size": 2,
        "text_pad_token_id": 3,
        "text_new_word_token_id": 4,
        "text_zero_token_id": 7,
        "action_pad_token_id": 0,
        "action_new_word_token_id": 1,
        "first_word_min_start": 0,
        "max_pad": 6,
        "second_stream_ahead": 1,
    },
    "model": {
        "decoder": {"n_layer": 4, "n_embd": 128, "n_hidden": 256, "low_rank_dim": 64, **_STACK},
        "depformer": {
            "n_layer": 2,
            "n_embd": 96,
            "n_hidden": 192,
            **_STACK,
            "kv_heads": 4,  # upstream's depformer attends without grouping
            "apply_rope": True,
            "text_embedding": True,
            "mlp_activations": ["silu", "linear"],
        },
        "linear": {"mlp_activations": ["silu", "linear"]},
        "dropout": 0.0,
        "rope_min_timescale": 1,
        "rope_max_timescale": 10000,
        "normalization_layer_epsilon": 1e-05,
    },
    "runtime": {"max_context_steps": 512},
    "assets": {"tokenizer": "tokenizer", "mimi": "mimi"},
}


# The base's card: what it is, and the license a fine-tune of it is published under (`dia-tpu push` reads it).
CARD = """---
license: apache-2.0
---
# A tiny random Dia2

Written by dia_tpu (`python -m dia_tpu.families.dia2.tiny`) for its demo: randomly initialised, not a trained model.
"""


def write_tokenizer(vocab: dict[str, int], folder: Path) -> None:
    """A word-level tokenizer of `vocab` (with `<unk>` and `<bos>`), split on spaces, saved for `AutoTokenizer`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    table.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=table, bos_token="<bos>", unk_token="<unk>").save_pretrained(folder)


def write_mimi(codebooks: int, codebook_size: int, folder: Path, seed: int = 0) -> None:
    """A small random Mimi with `codebooks` codebooks of `codebook_size` (one semantic), codebooks drawn apart."""
    from transformers import MimiConfig, MimiModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = MimiModel(
            MimiConfig(
                hidden_size=16,
                num_filters=4,
                num_residual_layers=1,
                upsampling_ratios=[8, 6, 5, 4],
                upsample_groups=16,
                codebook_size=codebook_size,
                codebook_dim=8,
                vector_quantization_hidden_dimension=8,
                num_quantizers=codebooks,
                num_semantic_quantizers=1,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                intermediate_size=32,
                sliding_window=16,
                use_cache=True,  # as upstream decodes: Mimi returning its cache beside the audio
            )
        )
        with torch.no_grad():
            for name, buffer in codec.named_buffers():
                if name.endswith("embed_sum"):
                    buffer.copy_(torch.randn_like(buffer))
    codec.save_pretrained(folder)


def write_demo_model(folder: Path, words: list[str], codebooks: int = 8, codebook_size: int = 64) -> Path:
    """The demo's base model in `folder`: `DEMO`'s network sized for `words` and the codec, seeded weights."""
    raw = copy.deepcopy(DEMO)
    vocab = dict(SPECIAL)
    for word in words:
        vocab.setdefault(word, len(vocab))
    raw["data"] |= {
        "channels": 2 + codebooks,
        "text_vocab_size": len(vocab),
        "audio_vocab_size": codebook_size + 2,
        "audio_bos_token_id": codebook_size,
        "audio_pad_token_id": codebook_size + 1,
        "delay_pattern": [1] + [2] * (codebooks - 1),
    }
    raw["runtime"]["weights_schedule"] = [0] + [1] * (codebooks - 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Dia2Model(parse_config(raw))
    write_model(model, folder)
    (folder / "README.md").write_text(CARD)
    write_tokenizer(vocab, folder / "tokenizer")
    write_mimi(codebooks, codebook_size, folder / "mimi")
    return folder


def transcript_words(source: str | Path) -> list[str]:
    """Every word of the transcripts of `source` (anything `dia-tpu prepare` reads, read as it reads it), in order
    first met, speaker tags left out."""
    words = [w for clip in read_clips(str(source), PrepareConfig()) for w in clip.text.split() if w not in SPECIAL]
    return list(dict.fromkeys(words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--words", required=True, help="a source whose transcripts' words the tokenizer knows")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: give a new folder")
    print(f"tiny Dia2: {write_demo_model(args.out, transcript_words(args.words))}")


if __name__ == "__main__":
    main()
