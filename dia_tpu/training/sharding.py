"""Which sharding a run gets (`train.sharding`), decided before the Accelerator exists, and the few steps it adds
to training: SPMD on XLA (`dia_tpu.training.spmd`), FSDP2 through Accelerate elsewhere (`dia_tpu.training.fsdp`),
or none (plain data parallel)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, is_torch_xla_available

from dia_tpu.config import Config, ConfigError
from dia_tpu.families import family_of
from dia_tpu.model.adapters import is_peft
from dia_tpu.training import fsdp
from dia_tpu.training.runtime import Runtime

Kind = Literal["none", "spmd", "fsdp2"]


@dataclass
class Sharding:
    kind: Kind
    plugin: Any = None  # the FSDP2 plugin given to the Accelerator
    mesh: Any = None  # the SPMD mesh
    launcher_fsdp: str | None = None  # ACCELERATE_USE_FSDP as the launcher left it

    @classmethod
    def before_accelerator(cls, cfg: Config) -> Sharding:
        """Start SPMD (it must come before anything touches the XLA device) or build the FSDP2 plugin."""
        if is_torch_xla_available():  # what makes Accelerate choose XLA
            if cfg.train.sharding != "fsdp":
                return cls("none")
            processes = int(os.environ.get("PJRT_LOCAL_PROCESS_COUNT", "1"))  # set by xmp.spawn, per host
            if processes > 1:
                raise ConfigError(
                    f"train.sharding=fsdp on XLA runs one process per host driving all its chips "
                    f"(SPMD), and this host started {processes} (accelerate launch --num_processes "
                    f"{processes}): they would train {processes} unrelated copies; start one, with "
                    "`python -m dia_tpu.finetune_acc_tpu` or `accelerate launch --num_processes 1`"
                )
            from dia_tpu.training import spmd

            spmd.start()
            return cls("spmd", mesh=spmd.build_mesh(cfg))  # a batch that cannot split is refused before any work
        plugin = fsdp.fsdp_plugin(cfg)
        launcher = os.environ.get("ACCELERATE_USE_FSDP")
        return cls("fsdp2", plugin, launcher_fsdp=launcher) if plugin is not None else cls("none")

    def engage(self, accelerator: Accelerator) -> str | None:
        """Right after the Accelerator: make FSDP2 take effect with CPU processes; returns a note for the log
        when the run shards nothing after all (one process)."""
        if self.kind != "fsdp2":
            return None
        # Given a plugin, the Accelerator sets ACCELERATE_USE_FSDP=true for the whole process; put back what the
        # launcher said, or a later run in this process would take it for --use_fsdp.
        if self.launcher_fsdp is None:
            os.environ.pop("ACCELERATE_USE_FSDP", None)
        else:
            os.environ["ACCELERATE_USE_FSDP"] = self.launcher_fsdp
        fsdp.engage_on_cpu(accelerator, self.plugin)
        if accelerator.distributed_type != DistributedType.FSDP:
            self.kind = "none"
            return "train.sharding=fsdp: one process, nothing to shard; training unsharded"
        return None

    def before_prepare(self, cfg: Config, model: torch.nn.Module) -> None:
        if self.kind == "fsdp2":
            family_of(cfg.model).expose_input_embeddings(model)

    def after_prepare(self, cfg: Config, model: torch.nn.Module, loaders: list) -> str | None:
        """Annotate the prepared model and loaders (SPMD); returns the log line saying how the run is sharded."""
        if self.kind == "spmd":
            from dia_tpu.training import spmd

            family = family_of(cfg.model)
            spmd.shard_model(model, self.mesh, family.shard_units)
            for loader in loaders:
                if loader is not None:
                    spmd.shard_batches(loader, self.mesh, family.batch_ranks)
            return spmd.describe(model, self.mesh)
        if self.kind == "fsdp2":
            held, total = fsdp.local_share(model)
            return (
                f"sharding: FSDP2, this process holding {held / 1e6:.2f} M of the {total / 1e6:.2f} M weights "
                "and their gradients and optimizer state"
            )
        return None

    def after_resume(self, optimizer: torch.optim.Optimizer) -> None:
        if self.kind == "spmd":
            from dia_tpu.training import spmd

            spmd.reshard_optimizer_state(optimizer, self.mesh)


def whole_weights(accelerator: Accelerator, runtime: Runtime, model) -> dict[str, torch.Tensor] | None:
    """The prepared model's weights made whole on the host where the run splits them, for the copies that
    samples, the audio evaluation and the export take; None where the unwrapped model's own state dict is whole.
    Under FSDP2 they are gathered onto the main process (a collective: every process calls this; the others get
    nothing); under SPMD each sharded tensor is put together (`spmd.host_state_dict`). On XLA the pending step
    runs first, as the one graph it always is."""
    if runtime.on_xla:
        from dia_tpu.training.xla import finish_pending

        finish_pending()
    if runtime.fsdp:
        return accelerator.get_state_dict(model)
    live = accelerator.unwrap_model(model)
    if runtime.spmd and not is_peft(live):
        from dia_tpu.training.spmd import host_state_dict

        return host_state_dict(live.state_dict())
    return None
