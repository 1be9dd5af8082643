"""Sharded training on XLA (`train.sharding: fsdp` on a TPU): fully sharded data parallel in torch_xla's SPMD.

Under SPMD one process per host drives all of that host's chips, and the compiler partitions one program over
them from sharding annotations. The devices form a mesh of axes (`data`, `fsdp`) of `train.mesh_data` x the
rest. What is annotated is what torch_xla's `SpmdFullyShardedDataParallel` (FSDPv2) annotates, placed by hooks
instead of wrapper modules, so the model keeps its own parameter names and checkpoints, exports, LoRA and the
CPU copy for samples read as on one device:

- every parameter and its gradient: the largest dimension split over `fsdp` (replicated over `data`), so the
  gradients are reduce-scattered rather than all-reduced; AdamW's moments take their parameter's sharding;
- the output of every repeated layer of the model's family (Dia: encoder and decoder layers; Dia2: backbone
  and depformer layers) and the logits: the batch dimension over both axes, which makes
  the compiler gather a layer's weights for that layer (FSDP) rather than split its activations; plus a
  backward optimization barrier per layer, so gradient reductions are not fused across layers;
- every batch from the prepared loaders: its batch dimension over both axes.

Imported only on XLA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch_xla
import torch_xla.distributed.spmd as xs
import torch_xla.runtime as xr

from dia_tpu.config import Config, ConfigError

AXES = ("data", "fsdp")
BATCH = (AXES,)  # the batch dimension split over both axes
# Bytes of sharded tensors gathered at once when copying them to the host: each device holds that much more
# for a moment.
GATHER_BYTES = 256 * 2**20


def start() -> None:
    """Switch this process to SPMD: before the Accelerator (or anything else) touches the XLA device."""
    xr.use_spmd()


def device_count() -> int:
    return xr.global_runtime_device_count()


def build_mesh(cfg: Config) -> xs.Mesh:
    """The (data, fsdp) mesh over every device of the run; every batch must split evenly over it."""
    n, local, data = device_count(), xr.addressable_runtime_device_count(), cfg.train.mesh_data
    problems = [f"train.mesh_data={data} does not divide the {n} devices"] if n % data else []
    problems += [
        f"{key}={size}: under SPMD it is the batch of one host, split over its {local} devices; make it a "
        f"multiple of {local}"
        for key, size in (("train.batch_size", cfg.train.batch_size), ("eval.batch_size", cfg.eval.batch_size))
        if size % local
    ]
    if problems:
        raise ConfigError("train.sharding=fsdp on XLA:\n  - " + "\n  - ".join(problems))
    return xs.Mesh(np.arange(n), (data, n // data), AXES)


def weight_spec(tensor: torch.Tensor) -> tuple:
    """A parameter's (or its optimizer state's) partition: the largest dimension over `fsdp`, as FSDPv2 does."""
    spec: list = [None] * tensor.dim()
    if spec:
        spec[max(range(tensor.dim()), key=lambda i: tensor.shape[i])] = "fsdp"
    return tuple(spec)


def batch_spec(rank: int) -> tuple:
    return BATCH + (None,) * (rank - 1)


def shard_model(model: torch.nn.Module, mesh: xs.Mesh, units: tuple[str, ...]) -> None:
    """Annotate a model already on the XLA device (after `accelerator.prepare`): weights, the outputs of the
    layers whose class names are `units` and the logits, and the per-layer backward barriers."""

    def shard_gradient(param: torch.Tensor) -> None:
        xs.mark_sharding(param.grad, mesh, weight_spec(param))

    for param in model.parameters():
        xs.mark_sharding(param, mesh, weight_spec(param))
        if param.requires_grad:
            # Left to propagation, XLA replicates the gradients (an all-reduce, a whole copy on every device).
            param.register_post_accumulate_grad_hook(shard_gradient)

    def batch_sharded(module, inputs, output):
        for found in _batch_first(output):
            xs.mark_sharding(found, mesh, batch_spec(found.dim()))

    for module in model.modules():
        if type(module).__name__ in units:
            module.register_forward_hook(batch_sharded)
            xs.xla_sharding.apply_backward_optimization_barrier(module)
    model.register_forward_hook(batch_sharded)


def _batch_first(output) -> list[torch.Tensor]:
    """The batch-first tensors of a layer's or model's output: itself, its `logits` (transformers), the first of a
    tuple, or every tensor field of a dataclass (Dia2's logits)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return [output.logits]
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return [output[0]]
    return (
        [value for value in vars(output).values() if isinstance(value, torch.Tensor)]
        if hasattr(output, "__dict__")
        else []
    )


def shard_batches(loader, mesh: xs.Mesh, ranks: dict[str, int]) -> None:
    """Split every batch a prepared XLA loader sends to the device over the mesh, along the batch dimension (each
    of the family's batch tensors by its rank, `ranks`). On a pod each host loads its own part of the global
    batch (`minibatch`)."""
    minibatch = xr.process_count() > 1
    loader._parallel_loader_kwargs["input_sharding"] = {
        key: xs.ShardingSpec(mesh, batch_spec(rank), minibatch=minibatch) for key, rank in ranks.items()
    }


def reshard_optimizer_state(optimizer: torch.optim.Optimizer, mesh: xs.Mesh) -> None:
    """Give each parameter's optimizer state its parameter's sharding again. Workaround for Accelerate 1.15 with
    torch_xla 2.9: `load_state` sends the loaded state to the device replicated, so after a resume every device
    would hold all of AdamW's moments (the numbers stay exact; the memory does not)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim():
                    xs.mark_sharding(value, mesh, weight_spec(value))


def sharding_of(tensor: torch.Tensor) -> str:
    """XLA's sharding annotation of a device tensor, e.g. `{devices=[4,1]0,1,2,3}`; empty when replicated."""
    return torch_xla._XLAC._get_xla_sharding_spec(tensor)


def describe(model: torch.nn.Module, mesh: xs.Mesh) -> str:
    """One line on how the run is sharded, for the log."""
    data, fsdp = mesh.mesh_shape
    total = sum(p.numel() for p in model.parameters())
    held = sum(p.numel() / (fsdp if sharding_of(p) else 1) for p in model.parameters())
    return (
        f"sharding: SPMD over {data * fsdp} devices (mesh data {data} x fsdp {fsdp}), each holding "
        f"{held / 1e6:.2f} M of the {total / 1e6:.2f} M weights and their gradients and optimizer state"
    )


def host_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """CPU copies of device tensors, sharded or not. Workaround for torch_xla 2.9: reading a sharded tensor
    compiles a program of its own to put it together (`ReplicateShardedData`), for every tensor on every read,
    so a checkpoint of Dia-1.6B would compile ~1,500 programs on every save. Here the sharded ones are made whole
    by graphs of up to GATHER_BYTES each, the same graphs every time (compiled once per run), then read."""
    mesh = xs.Mesh(np.arange(device_count()), (device_count(),), ("all",))
    out: list[torch.Tensor | None] = [None] * len(tensors)
    sharded = [i for i, t in enumerate(tensors) if sharding_of(t) not in ("", "{replicated}")]
    groups: list[list[int]] = [[]]
    for i in sharded:
        if groups[-1] and sum(tensors[j].nbytes for j in groups[-1]) + tensors[i].nbytes > GATHER_BYTES:
            groups.append([])
        groups[-1].append(i)
    for group in groups:
        whole = [tensors[i] * 1 for i in group]  # new tensors of the graph, to be laid out replicated
        for tensor in whole:
            xs.mark_sharding(tensor, mesh, (None,) * tensor.dim())
        torch_xla.sync()
        for i, tensor in zip(group, whole, strict=True):
            out[i] = tensor.cpu()
    return [copy if copy is not None else tensor.cpu() for copy, tensor in zip(out, tensors, strict=True)]


def host_state_dict(state: dict) -> dict:
    """A state dict (a model's, or an optimizer's with its nested state) with every device tensor on the host."""
    found: list[torch.Tensor] = []
    _map_device_tensors(state, found.append)
    copies = iter(host_copies(found))
    return _map_device_tensors(state, lambda tensor: next(copies))


def _map_device_tensors(value, fn):
    """`value` rebuilt with `fn(tensor)` in place of every XLA tensor inside its dicts, lists and tuples."""
    if isinstance(value, torch.Tensor) and value.device.type == "xla":
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_device_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_device_tensors(item, fn) for item in value)
    return value


@contextmanager
def saving_from_host(accelerator, folder: Path) -> Iterator[None]:
    """Around `accelerator.save_state` under SPMD: write the models and optimizers as Accelerate would (its file
    names and format, its save hooks applied), from `host_copies`, and hide them from Accelerate meanwhile, which
    would read every sharded tensor on its own (see `host_copies`). Loading is Accelerate's, unchanged."""
    from accelerate.utils import OPTIMIZER_NAME, WEIGHTS_NAME

    models, optimizers = accelerator._models, accelerator._optimizers
    torch_xla.sync()
    weights = [host_state_dict(model.state_dict()) for model in models]
    for hook in accelerator._save_model_state_pre_hook.values():
        hook(models, weights, str(folder))
    states = [host_state_dict(optimizer.state_dict()) for optimizer in optimizers]
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for i, state in enumerate(weights):
            torch.save(state, folder / (WEIGHTS_NAME if i == 0 else WEIGHTS_NAME.replace(".", f"_{i}.")))
        for i, state in enumerate(states):
            torch.save(state, folder / (f"{OPTIMIZER_NAME}.bin" if i == 0 else f"{OPTIMIZER_NAME}_{i}.bin"))
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers
