"""What a Dia2 model speaks with besides its weights: the tokenizer and the Mimi codec its `config.json` names
under `assets` (or `data.tokenizer_path`).

A name that is a folder inside the model's folder is taken from there (upstream resolves it against the working
directory, so a folder moved elsewhere loses its assets); another existing path is taken as it is; anything else
is a hub id. The codec defaults to `kyutai/mimi`, the tokenizer to the model folder itself when it holds one.

No code from a model repository runs unless asked: the tokenizer loads without `trust_remote_code`, and a
tokenizer that needs its own code is refused with the flag that allows it, which says what will run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, MimiModel, PreTrainedTokenizerBase

from dia_tpu.errors import UserError
from dia_tpu.families.dia2.config import Dia2Config
from dia_tpu.families.dia2.script import TextIds
from dia_tpu.hub import from_hub

DEFAULT_MIMI = "kyutai/mimi"
ASSETS_FILE = "dia2_assets.json"  # upstream's asset manifest
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve(folder: Path, name: str) -> str:
    """An asset's name as the model folder sees it: a folder inside it, an existing path, or a hub id."""
    inside = folder / name
    if not Path(name).is_absolute() and inside.exists():
        return str(inside)
    return name


def manifest_entry(folder: Path, key: str) -> str | None:
    """What the folder's `dia2_assets.json` (upstream's asset manifest, in released repositories) names for
    `key`, if anything."""
    try:
        value = json.loads((folder / ASSETS_FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def tokenizer_source(folder: Path, cfg: Dia2Config) -> str:
    if cfg.tokenizer:
        return resolve(folder, cfg.tokenizer)
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return str(folder)
    if named := manifest_entry(folder, "tokenizer"):
        return resolve(folder, named)
    raise UserError(
        f"{folder}/config.json names no tokenizer (assets.tokenizer) and the folder holds none: name one there"
    )


def load_tokenizer(folder: Path, cfg: Dia2Config, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    source = tokenizer_source(folder, cfg)
    with from_hub("Dia2's tokenizer (assets.tokenizer)", source):
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise UserError(
                f"Dia2's tokenizer {source} ships its own Python code, which dia_tpu does not run unless asked: "
                "read it first, then add --trust-remote-code to run it"
            ) from err


def text_ids(cfg: Dia2Config, tokenizer: PreTrainedTokenizerBase) -> TextIds:
    """The text ids the script machine writes: the config's pad, new word and zero; the tokenizer's BOS (1
    without one) and speaker tags (the new-word id where the vocabulary lacks them, as upstream does)."""
    vocab = tokenizer.get_vocab()
    speaker = {tag: vocab.get(tag, cfg.text_new_word) for tag in ("[S1]", "[S2]")}
    return TextIds(
        pad=cfg.text_pad,
        new_word=cfg.text_new_word,
        zero=cfg.text_zero,
        bos=tokenizer.bos_token_id or 1,
        spk1=speaker["[S1]"],
        spk2=speaker["[S2]"],
    )


def mimi_source(folder: Path, cfg: Dia2Config) -> str:
    return resolve(folder, cfg.mimi or manifest_entry(folder, "mimi") or DEFAULT_MIMI)


def load_mimi(folder: Path, cfg: Dia2Config, device: str | torch.device = "cpu") -> MimiModel:
    source = mimi_source(folder, cfg)
    with from_hub("Dia2's codec (assets.mimi)", source):
        codec = MimiModel.from_pretrained(source, dtype=torch.float32)
    if codec.config.num_quantizers < cfg.codebooks or codec.config.codebook_size < cfg.audio_limit:
        raise UserError(
            f"Dia2's codec {source} has {codec.config.num_quantizers} codebooks of {codec.config.codebook_size}; "
            f"the model writes {cfg.codebooks} of {cfg.audio_limit}"
        )
    return codec.to(device).eval()


def decode(codec: MimiModel, codes: torch.Tensor) -> torch.Tensor:
    """Aligned codes [N, F] -> mono audio [samples] in [-1, 1] at the codec's rate."""
    if codes.shape[-1] == 0:
        return torch.zeros(0)
    with torch.no_grad():
        audio = codec.decode(codes[None].to(codec.device)).audio_values
    return audio[0, 0].clamp(-1.0, 1.0).cpu()
