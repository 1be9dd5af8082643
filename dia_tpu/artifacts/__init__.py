"""What dia_tpu leaves on disk and how it is read back: the run folder's layout, and `open_artifact`, the one
reader of any saved model (an export, a training checkpoint or `best/`, a LoRA run's checkpoint, a native
Nari Labs checkpoint, a hub id). Reading a weights file, in each format a run saves: `dia_tpu.artifacts.weights`.

    output.dir/
      config.yaml               the run's resolved config (absolute paths)
      checkpoints/step_N/       the whole training state (`dia_tpu.training.checkpoint`), the newest kept
      best/                     the same, at the lowest eval loss
      final/                    the export: a `from_pretrained` folder (`dia_tpu.export`), `adapter/` for LoRA
      samples/step_NNNNNN/      wavs, spectrograms and index.json of the samples generated during training
      evaluations/step_NNNNNN/  eval.audio's judged utterances: rows.jsonl and wavs (the main process's share)
      logs/                     tracker files (TensorBoard)
      .lock                     held by the run in progress (pid, host; `dia_tpu.artifacts.lock`)
      .dia_tpu.json             marks the folder as a run: what training may replace (`dia_tpu.artifacts.owner`)
      .mirror/                  saved folders waiting to be uploaded to `output.mirror` (`dia_tpu.training.mirror`)

A saved config is read with `read_saved`: types only, so a folder opens from any directory and on another
machine, whatever the paths in it.

The modules: `run_folder` (the layout above), `marks` (a checkpoint's completion mark), `writes` (folders put in
place by renames, made durable), `opening` (`open_artifact`), `native` (a native checkpoint recognised on
disk), `weights` and `sharded` (weights files), `owner` and `lock` (what a command may replace, and who holds a
folder), `names` (safe file names) and `audit` (`dia-tpu audit`).
"""

from dia_tpu.artifacts.marks import (
    COMPLETE_FILE,
    completion_mark,
    file_sizes,
    is_complete,
    mark_complete,
    mark_text,
    valid_mark,
)
from dia_tpu.artifacts.opening import Artifact, Kind, dia_only, is_checkpoint, open_artifact
from dia_tpu.artifacts.run_folder import (
    ADAPTER_DIR,
    CODEC_DIR,
    CONFIG_FILE,
    SAMPLES_INDEX,
    STATE_FILE,
    STEP_DIR,
    RunFolder,
)
from dia_tpu.artifacts.writes import existing_parent, put_in_place, sync_dir, write_failure

__all__ = [
    "ADAPTER_DIR",
    "CODEC_DIR",
    "COMPLETE_FILE",
    "CONFIG_FILE",
    "SAMPLES_INDEX",
    "STATE_FILE",
    "STEP_DIR",
    "Artifact",
    "Kind",
    "RunFolder",
    "completion_mark",
    "existing_parent",
    "file_sizes",
    "is_checkpoint",
    "is_complete",
    "mark_complete",
    "mark_text",
    "open_artifact",
    "dia_only",
    "put_in_place",
    "sync_dir",
    "valid_mark",
    "write_failure",
]
