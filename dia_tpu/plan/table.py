"""The memory plan as the text table `dia-tpu plan` prints."""

from __future__ import annotations

from dia_tpu.plan.estimate import GIB, HEADROOM, MemoryPlan

# How each family is named at the head of a plan.
NAMES = {"dia": "Dia", "dia2": "Dia2"}


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a text table, sizes in GiB."""

    def gib(n: float) -> str:
        return f"{n / GIB:.2f}"

    share = 100 * plan.trainable / plan.params
    precision = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[plan.mixed_precision]
    rows = [
        ("weights (fp32, all parameters)", plan.weights),
        ("gradients (fp32, trainable parameters)", plan.gradients),
        (f"optimizer state ({plan.optimizer.split()[0]})", plan.optimizer_state),
        ("activations: live after forward + loss", plan.activations),
        *(
            [("autocast weight copies: cached until the forward returns", plan.autocast_copies)]
            if plan.autocast_copies
            else []
        ),
        ("forward+backward peak: activations, copies, gradients so far, temporaries", plan.backward_peak),
        ("optimizer update peak: gradients + update temporaries", plan.update_peak),
    ]
    if plan.ddp_buckets:
        rows.append(("DDP gradient buckets", plan.ddp_buckets))
    rows.append(
        ("total: weights + optimizer state + the larger peak" + (" + buckets" if plan.ddp_buckets else ""), plan.total)
    )
    width = max(len(label) for label, _ in rows)
    lines = [
        f"{NAMES[plan.family]}: {plan.params / 1e6:.2f} M parameters, {plan.trainable / 1e6:.2f} M trainable "
        f"({share:.2f} %)",
        f"step: {plan.accumulation} x batch {plan.batch_size} of "
        + (f"{plan.text_tokens} text tokens and " if plan.text_tokens is not None else "")
        + f"{plan.decoder_steps} {'decoder positions' if plan.text_tokens is not None else 'frames'}; {precision}, "
        f"{'gradient checkpointing' if plan.gradient_checkpointing else 'no gradient checkpointing'}, "
        f"{plan.optimizer} as on {plan.device}",
        "",
        f"{'per device':<{width + 2}}  {'GiB':>7}",
        *(f"  {label:<{width}}  {gib(value):>7}" for label, value in rows),
        "",
    ]
    n = plan.processes
    if n > 1:
        lines += [
            f"{n} processes, plain data parallel (DDP): every device holds all of the above, as one process does.",
            f"{n} processes, sharded (train.sharding=fsdp): {gib(plan.fsdp_total)} GiB per device, of which "
            f"{gib(plan.gathered)} gathered whole for a moment (the root unit, two layers' weights, one layer's "
            "gradients).",
        ]
    else:
        lines.append(
            "Several processes in plain data parallel hold all of this on every device; sharding "
            "(train.sharding=fsdp) divides weights, gradients and optimizer state among them."
        )
    lines += [
        "",
        f"fits with {HEADROOM:.0%} of each device's memory kept for the framework, allocator and kernel "
        "workspaces (totals per device use that device's optimizer implementation):",
    ]
    header = ["device", "GiB", "usable", "data parallel" if n > 1 else "needs", "fits"]
    if n > 1:
        header += [f"FSDP x{n}", "fits"]
    table = [header]
    for fit in plan.fits:
        row = [fit.device, gib(fit.memory), gib(fit.usable)]
        if fit.fits_data_parallel is None:
            row += ["-", "n/a"] * (2 if n > 1 else 1)
        else:
            row += [gib(fit.data_parallel), "yes" if fit.fits_data_parallel else "no"]
            if n > 1:
                row += [gib(fit.fsdp), "yes" if fit.fits_fsdp else "no"]
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if i in (0, 4, 6) else cell.rjust(w) for i, (cell, w) in pairs]
        lines.append("  " + "  ".join(cells).rstrip())
    if any(fit.fits_data_parallel is None for fit in plan.fits):
        lines.append(f"n/a: {plan.optimizer.split()[0]} has no kernels for that device")
    lines += ["", *format_sharded(plan)]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def format_sharded(plan: MemoryPlan) -> list[str]:
    """The sharded table: the fewest devices of each kind that hold the step, and its GiB per device there."""

    def gib(n: float) -> str:
        return f"{n / GIB:.2f}"

    lines = [
        f"sharded (train.sharding=fsdp), {plan.batch_size} items per device: the fewest devices of each kind "
        "that hold the step, GiB per device:"
    ]
    table = [["device", "count", "slice", "weights", "grads", "optim", "step peak", "gathered", "total", "usable"]]
    for s in plan.sharded:
        count = str(s.count) if s.count is not None else f">{s.name.split('-')[-1].split()[0]}"
        name = s.name if s.count is not None else "-"
        table.append(
            [
                s.device,
                count,
                name,
                *(
                    gib(v)
                    for v in (s.weights, s.gradients, s.optimizer_state, s.step_peak, s.gathered, s.total, s.usable)
                ),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.ljust(w) if i in (0, 2) else cell.rjust(w) for i, (cell, w) in pairs]
        lines.append("  " + "  ".join(cells).rstrip())
    lines.append(
        "step peak: forward+backward or the update, gradients and autocast copies sharded, activations "
        "not; gathered: the root unit, two layers' weights and one layer's gradients held whole"
    )
    return lines
