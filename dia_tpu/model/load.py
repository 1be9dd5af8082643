"""Load a saved model for inference or export: whatever `dia_tpu.artifacts.open_artifact` finds, with a LoRA
adapter folded in on request, and the codec it was trained with."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DacModel, DiaConfig, DiaForConditionalGeneration

from dia_tpu.artifacts import Artifact, dia_only, open_artifact
from dia_tpu.artifacts.weights import is_sharded, read_weights, refusing_code
from dia_tpu.config import run_sampling
from dia_tpu.hub import from_hub
from dia_tpu.model.adapters import check_trained_names, import_bitsandbytes_quietly, merged, setup_training
from dia_tpu.model.build import build_model, carrying, default_generation_config, plain_model
from dia_tpu.model.codec import build_codec
from dia_tpu.model.native_files import load_native_model
from dia_tpu.model.shapes import restore_attention_scale


def load_for_inference(
    source: str | Path | Artifact, device: str | torch.device = "cpu", adapter: str | None = None
) -> tuple[DiaForConditionalGeneration, DacModel]:
    """Load (model, codec) from anything `open_artifact` opens; `adapter` folds a LoRA adapter folder (peft
    format) into the model. The codec is the one saved inside an export, else the one its run's config
    names, else Dia's (`descript/dac_44khz`). The model's generation config holds the sampling generation
    defaults to: an export's own file, a checkpoint's run's (`run_sampling`), else Dia-1.6B's published one."""
    artifact = source if isinstance(source, Artifact) else open_artifact(source)
    model = load_model(artifact, adapter).to(device).eval()
    if model.generation_config.guidance_scale is None:
        model.generation_config = default_generation_config(model.config)
    if artifact.kind in ("checkpoint", "lora_checkpoint") and artifact.config is not None:
        # A checkpoint samples as its run did, as the run's exports do (theirs is in generation_config.json).
        model.generation_config = carrying(model.generation_config, run_sampling(artifact.config, "dia"))
    return model, build_codec(artifact.codec).to(device)


def load_model(source: str | Path | Artifact, adapter: str | None = None) -> DiaForConditionalGeneration:
    """The model alone, in fp32, from any source `load_for_inference` takes."""
    artifact = source if isinstance(source, Artifact) else open_artifact(source)
    with refusing_code(artifact.source):
        model = _load_weights(artifact)
    return model if adapter is None else _with_adapter(model, adapter)


def _load_weights(artifact: Artifact) -> DiaForConditionalGeneration:
    dia_only(artifact)
    if artifact.kind == "native":
        model = load_native_model(artifact.source)
    elif artifact.kind == "lora_checkpoint":
        model = merged(load_trained(artifact))
    elif artifact.weights is not None and is_sharded(artifact.weights):
        model = plain_model(DiaConfig.from_pretrained(artifact.source), read_weights(artifact.weights))
    else:
        with from_hub("--model", artifact.source):
            model = DiaForConditionalGeneration.from_pretrained(artifact.source, dtype=torch.float32)
        restore_attention_scale(model)
    return model


def _with_adapter(model: DiaForConditionalGeneration, adapter: str) -> DiaForConditionalGeneration:
    """`model` with a peft LoRA adapter folder merged into its weights."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} holds no adapter_config.json: not a LoRA adapter folder")
    import_bitsandbytes_quietly()
    import peft

    return peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()


def load_trained(checkpoint: str | Path | Artifact) -> torch.nn.Module:
    """A LoRA run's checkpoint as the PeftModel it trained: the base rebuilt from the run's config, then the
    saved adapter (and modules_to_save) weights, which must be exactly its trainable parameters."""
    artifact = checkpoint if isinstance(checkpoint, Artifact) else open_artifact(checkpoint)
    if artifact.config is None or artifact.weights is None:
        raise FileNotFoundError(f"{artifact.source}: not a dia_tpu training checkpoint (no config.yaml or weights)")
    cfg = artifact.config
    model = setup_training(build_model(cfg.model), cfg.model)
    state = {key.removeprefix("module."): value for key, value in read_weights(artifact.weights).items()}
    check_trained_names(artifact.path, set(state), model)
    model.load_state_dict(state, strict=False)
    return model.eval()


def language_tags_of(source: str | Path | Artifact) -> dict:
    """The data.language_tags a saved model was trained with (its run's config), else none."""
    artifact = source if isinstance(source, Artifact) else open_artifact(source)
    return artifact.config.data.language_tags if artifact.config is not None else {}
