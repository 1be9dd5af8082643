"""A Dia2 training checkpoint read back and written out: the model it trained (the base from the run's
`model.pretrained`, set up as the run set it up, the checkpoint's weights loaded), exported in upstream's format
with any LoRA adapters folded in, or as the adapter alone."""

from __future__ import annotations

from pathlib import Path

import peft
import torch

from dia_tpu.artifacts import CONFIG_FILE
from dia_tpu.artifacts.weights import read_weights, weights_file
from dia_tpu.config import read_saved
from dia_tpu.errors import UserError
from dia_tpu.export import building_beside, check_out, save_adapter
from dia_tpu.families.dia2.export import export_dia2
from dia_tpu.families.dia2.files import WEIGHTS_FILE, load_weights
from dia_tpu.families.dia2.source import source_folder
from dia_tpu.model.adapters import check_trained_names


def load_trained(folder: Path) -> torch.nn.Module:
    """The model a Dia2 run saved in `folder`: a full run's weights are the whole model under upstream's names,
    a LoRA run's its adapters alone (which must be exactly the run's trainable parameters)."""
    from dia_tpu.families.dia2.family import FAMILY

    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not a dia_tpu checkpoint of a Dia2 run")
    cfg = read_saved(folder / CONFIG_FILE)
    weights = weights_file(folder)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds no model weights")
    model = FAMILY.set_up_for_training(FAMILY.build(cfg.model, None), cfg, on_xla=False)
    if weights.name == WEIGHTS_FILE and not isinstance(model, peft.PeftModel):
        load_weights(model, weights)  # names every key that does not fit
        return model.eval()
    state = {key.removeprefix("module."): value for key, value in read_weights(weights).items()}
    if isinstance(model, peft.PeftModel):
        check_trained_names(folder, set(state), model)
        model.load_state_dict(state, strict=False)
    else:  # a sharded run's checkpoint, put together
        model.load_state_dict(state)
    return model.eval()


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, form: str = "merge", native_schema: str = ""
) -> Path:
    """`dia-tpu export` of a Dia2 checkpoint: "merge" writes upstream's format, "adapter" the LoRA adapter alone
    (peft's format); upstream's format is Dia2's native one, so there is no other."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if form == "native":
        raise UserError(
            f"{checkpoint} is a Dia2 checkpoint: its export is upstream's format already (--merge, the default)"
        )
    check_out(checkpoint, out_dir)
    model = load_trained(checkpoint)
    cfg = read_saved(checkpoint / CONFIG_FILE)
    if form == "adapter":
        if not isinstance(model, peft.PeftModel):
            raise UserError(f"{checkpoint} is a full fine-tune (model.lora.rank is 0): it has no adapter to export")
        with building_beside(out_dir) as building:
            save_adapter(model, building)
    else:
        export_dia2(model, cfg, source_folder(cfg.model.pretrained), out_dir)
    return out_dir
