"""Break the code on purpose and check that the tests meant to catch it fail.

    .venv/bin/python scripts/mutations.py [--only NAME ...] [--list]

Each mutation is one text replacement in one file, made in a copy of the repository (the working tree is never
touched) and run against the tests named for it, with the copy first on the import path (subprocesses the tests
start inherit it). A line per mutation says whether the tests caught it; the exit code is 1 when one survived.
The list is the suite's answer to "could this test fail?" for the properties that were once guarded by a
comparison that could not (tests/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the copy leaves out: environments, run outputs, git's history.
SKIP = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "skip the second micro-batch",
        "dia_tpu/training/step.py",
        "accelerator.backward(parts.weighted_sum / denominator * scale)",
        "accelerator.backward(parts.weighted_sum / denominator * scale * (batch is batches[0]))",
        ("tests/test_train.py::test_speed_options_keep_resume_exact_and_accumulation_equal",),
    ),
    Mutation(
        "drop the codec's autocast",
        "dia_tpu/data/prepare.py",
        "autocast = torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext()",
        "autocast = contextlib.nullcontext()",
        ("tests/test_prepare_scale.py::test_codec_mixed_precision_is_an_option",),
    ),
    Mutation(
        "forget the EOS target",
        "dia_tpu/data/batching.py",
        'audio[i, 1 + len(codes)] = self.pad if item["cropped"] else self.eos',
        "audio[i, 1 + len(codes)] = self.pad",
        ("tests/test_data.py::test_labels_are_codes_then_one_eos_with_specials_ignored",),
    ),
    Mutation(
        "accept any sharded metadata",
        "dia_tpu/artifacts/sharded.py",
        "    problem = _metadata_problem(metadata, folder, allow_bytes)\n",
        "    problem = None\n",
        ("tests/test_untrusted.py::test_a_pickled_entry_in_a_model_folder_is_refused_and_never_run",),
    ),
    Mutation(
        "replace any folder",
        "dia_tpu/artifacts/owner.py",
        "    if not path.exists() or kind_of(path) == kind or (path.is_dir() and not any(path.iterdir())):\n",
        "    if True:\n",
        ("tests/test_ownership.py::test_export_writes_only_into_a_new_empty_or_export_folder",),
    ),
    Mutation(
        "leave credentials in URLs",
        "dia_tpu/config/secrets.py",
        "    return _URL.sub(lambda match: _redacted(match.group()), text)",
        "    return text",
        ("tests/test_secrets.py::test_a_mirrored_run_keeps_its_credentials_in_the_process",),
    ),
    Mutation(
        "a prompt's id as it is",
        "dia_tpu/evaluation/prompts.py",
        'prompt = Prompt(file_name(str(item.get("id", f"line_{i:04d}"))), text)',
        'prompt = Prompt(str(item.get("id", f"line_{i:04d}")), text)',
        ("tests/test_evaluation.py::test_a_prompts_id_names_a_file_inside_the_output_only",),
    ),
    Mutation(
        "sample at temperature 1",
        "dia_tpu/generation/sampling.py",
        "logits = scores.float() / s.temperature",
        "logits = scores.float()",
        ("tests/test_generate.py::test_sampler_draws_in_proportion_to_the_probabilities",),
    ),
    Mutation(
        "the loss in the logits' precision",
        "dia_tpu/families/dia/loss.py",
        "logits = logits.float().reshape(size, channels, steps, -1)",
        "logits = logits.reshape(size, channels, steps, -1)",
        ("tests/test_loss.py::test_loss_is_computed_in_fp32_for_bf16_logits",),
    ),
    Mutation(
        "a similarity counted as a cost",
        "dia_tpu/evaluation/selection.py",
        "score += weight * (-value if name in HIGHER_IS_BETTER and math.isfinite(value) else value)",
        "score += weight * value",
        ("tests/test_evaluation.py::test_selection_weighs_each_figure_and_counts_similarity_negated",),
    ),
    Mutation(
        "export the base without its adapter",
        "dia_tpu/model/adapters.py",
        'out[prefix + "weight"] = module.base_layer.weight + module.get_delta_weight(adapter)',
        'out[prefix + "weight"] = module.base_layer.weight + 0 * module.get_delta_weight(adapter)',
        ("tests/test_lora.py::test_merged_state_dict_matches_merge_and_unload",),
    ),
)


def run(mutation: Mutation | None, tests: tuple[str, ...], work: Path) -> tuple[bool, float]:
    """(failed, seconds): whether `tests` failed in a copy of the repository with `mutation` made (None: as
    it is)."""
    copy = work / (mutation.name.replace(" ", "-").replace("'", "") if mutation else "unmutated")
    shutil.copytree(ROOT, copy, ignore=SKIP)
    if mutation is not None:
        target = copy / mutation.file
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise ValueError(
                f"{mutation.name}: the text to replace occurs {text.count(mutation.old)} times in "
                f"{mutation.file}; update the mutation"
            )
        target.write_text(text.replace(mutation.old, mutation.new))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(copy / "tests")])}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    return done.returncode != 0, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run the mutation of this name (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name}: {m.file}; {', '.join(m.tests)}")
        return 0 if chosen else 2
    survived = 0
    with tempfile.TemporaryDirectory(prefix="mutations_") as work:
        # The tests must pass as the code is, or a failure under a mutation would say nothing.
        failed, seconds = run(None, tuple(t for m in chosen for t in m.tests), Path(work))
        if failed:
            print(f"the mutations' tests fail on the code as it is ({seconds:.0f} s): fix them first")
            return 2
        for mutation in chosen:
            caught, seconds = run(mutation, mutation.tests, Path(work))
            survived += not caught
            verdict = "caught  " if caught else "SURVIVED"
            print(f"{verdict} {mutation.name} ({mutation.file}; {seconds:.0f} s)", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
