"""Check that dia_tpu's imports run down its layers: a module imports from its own unit (the package or module
directly under dia_tpu it belongs to) and from units of lower layers, never from a higher layer or from a
sibling unit of its own layer. Every import counts, the ones inside functions too: a function-local import
keeps a command's start fast, it does not make an upward edge any less of one.

    python scripts/layers.py           check; exit 1 naming each file, line and import that goes up or sideways
    python scripts/layers.py --graph   print which units import which (the graph the layers were read from)

`make lint` runs the check. A new unit must be given a layer in `LAYERS` before it passes.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dia_tpu"

# Lowest first. "__init__" is dia_tpu's own __init__.py (its version).
LAYERS = (
    ("__init__", "errors", "precision"),  # nothing of dia_tpu
    ("hub",),  # the hub's errors and ids
    ("console",),  # how commands print and stop
    ("config",),  # the typed config
    ("artifacts",),  # what is saved on disk, and the one reader of saved models
    ("model",),  # building and loading Dia, the codec, adapters
    ("data",),  # audio, prepare, the codes dataset, batches
    ("export",),  # writing a trained Dia as a loadable folder (families build their exports on it)
    ("listen",),  # recognisers, speaker encoders, the MOS predictor: shared by evaluation and transcribe
    ("families",),  # each model family's own parts (Dia2: config, network, upstream files)
    ("generation",),  # synthesis
    ("evaluation",),  # judging generated speech, and the score checkpoints are selected by
    ("report",),  # the run report training and publish build on
    ("publish",),  # the Hub upload and its model card
    ("training",),  # the recipe and its parts
    ("transcribe", "studio", "bench", "plan"),  # commands built on the layers below
    ("finetune_acc_tpu",),  # the Accelerate entry point: main() parses the config and calls train()
    ("cli",),  # the subcommands, `dia-tpu train` launching the entry point above
    ("__main__",),
)
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The unit a dotted module name of dia_tpu belongs to: `dia_tpu.model.load` is in `model`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of dia_tpu in a file, at any depth; `from dia_tpu import x` is
    x's module where x is one, and relative imports are resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.append((node.lineno, f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def main(argv: list[str]) -> int:
    problems, edges = [], defaultdict(set)
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    count = 0
    for path in files:
        rel = path.relative_to(ROOT)
        mine = unit_of(module_name(path))
        if mine not in LAYER_OF:
            problems.append(f"{rel}: unit {mine!r} has no layer: add it to LAYERS in scripts/layers.py")
            continue
        for line, name in imported(path):
            count += 1
            theirs = unit_of(name)
            if theirs == mine:
                continue
            edges[mine].add(theirs)
            if theirs not in LAYER_OF:
                continue  # reported at its own files
            if LAYER_OF[theirs] > LAYER_OF[mine]:
                problems.append(f"{rel}:{line}: imports {name}: {theirs} is in a higher layer than {mine}")
            elif LAYER_OF[theirs] == LAYER_OF[mine]:
                problems.append(f"{rel}:{line}: imports {name}: {theirs} is a sibling of {mine} in its layer")
    if "--graph" in argv:
        for unit in sorted(edges, key=lambda u: (LAYER_OF.get(u, -1), u)):
            print(f"{unit} -> {', '.join(sorted(edges[unit], key=lambda u: (LAYER_OF.get(u, -1), u)))}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"layers: {len(problems)} problems (the order is LAYERS in scripts/layers.py)", file=sys.stderr)
        return 1
    print(
        f"layers: {len(files)} modules, {count} imports of {PACKAGE}, none up or sideways across {len(LAYERS)} layers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
