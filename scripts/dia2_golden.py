"""Regenerate the Dia2 golden fixtures from an upstream checkout: a tiny random Dia2 in upstream's format, and what
upstream's own code computes with it.

    python scripts/dia2_golden.py --upstream PATH/TO/nari-labs/dia2 [--out tests/fixtures/dia2]

Run it in an environment where upstream imports (torch, transformers, safetensors, sphn, soundfile). It writes:

- `tiny/config.json` and `tiny/model.safetensors`: the model, in upstream's format. Its shape exercises what a
  real Dia2 has: grouped-query heads, the low-rank text table, a weights schedule that reuses a stage's weights,
  `second_stream_ahead`, four codebooks with different delays. Upstream initialises it from a fixed seed; the
  norms' weights are then drawn too, so that a norm read in the wrong place shows.
- `steps.safetensors`: a token grid and upstream's logits for it, computed one frame at a time against its cache
  (`Dia2Model.step_text`) and, per frame, one depformer stage at a time (`step_audio_stage`), as generation
  computes them; once as given and once with item 1's backbone text blanked as the guidance branch blanks it.
- `script.json`: upstream's text-stream rules on a stand-in tokenizer (`stand_in_ids`): a script's entries
  (`parse_script`), a voice prefix's timed entries (`words_to_entries`, `build_prefix_plan`'s offset), the text
  streams its forced warm-up writes (`warmup_with_prefix`'s use of the state machine), and the machine run free
  on given actions after it, with and without the second stream.
- `generation.json`: upstream's generation loop (`run_generation_loop`) on the tiny model at temperature 0 for
  both streams, a short script, with guidance off, at its defaults and with a narrow filter: the codes it
  writes (undelayed as upstream returns them) and the frame each word started.
- `UPSTREAM`: the commit the fixtures came from.

Only these outputs are committed; upstream's code is never copied into dia_tpu.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "data": {
        "channels": 6,
        "text_vocab_size": 48,
        "audio_vocab_size": 34,
        "action_vocab_size": 2,
        "text_pad_token_id": 3,
        "text_new_word_token_id": 4,
        "text_zero_token_id": 7,
        "audio_pad_token_id": 33,
        "audio_bos_token_id": 32,
        "action_pad_token_id": 0,
        "action_new_word_token_id": 1,
        "delay_pattern": [1, 2, 2, 3],
        "first_word_min_start": 0,
        "max_pad": 6,
        "second_stream_ahead": 1,
    },
    "model": {
        "decoder": {
            "n_layer": 2,
            "n_embd": 32,
            "n_hidden": 48,
            "gqa_query_heads": 4,
            "kv_heads": 2,
            "gqa_head_dim": 8,
            "low_rank_dim": 16,
        },
        "depformer": {
            "n_layer": 2,
            "n_embd": 24,
            "n_hidden": 40,
            "gqa_query_heads": 2,
            "kv_heads": 2,
            "gqa_head_dim": 8,
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
    "runtime": {"weights_schedule": [0, 1, 1], "max_context_steps": 96},
    "assets": {"tokenizer": None, "mimi": None},
}
BATCH, FRAMES = 2, 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of github.com/nari-labs/dia2")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/dia2")
    args = parser.parse_args()
    sys.path.insert(0, str(args.upstream))
    from dia2.config import load_config
    from dia2.core.model import Dia2Model
    from dia2.core.precision import Precision

    commit = subprocess.run(
        ["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tiny = args.out / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    (tiny / "config.json").write_text(json.dumps(TINY, indent=2) + "\n")
    config = load_config(tiny / "config.json")
    torch.manual_seed(0)
    model = Dia2Model(config, Precision(torch.float32, torch.float32), device=torch.device("cpu")).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "norm" in name:
                tensor.copy_(1 + 0.2 * torch.randn_like(tensor))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tiny / "model.safetensors")

    tokens = token_grid(config)
    blanked = torch.tensor([False, True])
    out = {"tokens": tokens, "unconditional": blanked}
    for suffix, mask in (("", None), ("_guided", blanked)):
        action, cb0, depth = stepwise(model, config, tokens, mask)
        out |= {f"action{suffix}": action, f"cb0{suffix}": cb0, f"depth{suffix}": depth}
    save_file(out, args.out / "steps.safetensors")
    (args.out / "script.json").write_text(json.dumps(script_cases()) + "\n")
    (args.out / "generation.json").write_text(json.dumps(generation_cases(model, config)) + "\n")
    (args.out / "UPSTREAM").write_text(f"github.com/nari-labs/dia2 {commit}\n")
    print(f"wrote {tiny} and {args.out / 'steps.safetensors'} from upstream {commit}")


def token_grid(config) -> torch.Tensor:
    """A random [B, 2 + N, T + 1] grid as generation fills it: text ids, audio ids below the specials, BOS
    before each codebook's delay, and some pads on the second text stream."""
    data = config.data
    generator = torch.Generator().manual_seed(1)
    steps = FRAMES + 1
    grid = torch.randint(0, data.text_vocab_size, (BATCH, data.channels, steps), generator=generator)
    grid[:, 1] = torch.where(torch.rand(BATCH, steps, generator=generator) < 0.4, data.text_pad_token_id, grid[:, 1])
    limit = min(data.audio_pad_token_id, data.audio_bos_token_id)
    grid[:, 2:] = torch.randint(0, limit, (BATCH, data.channels - 2, steps), generator=generator)
    for codebook, delay in enumerate(data.delay_pattern):
        grid[:, 2 + codebook, :delay] = data.audio_bos_token_id
    return grid


@torch.no_grad()
def stepwise(model, config, tokens: torch.Tensor, unconditional: torch.Tensor | None):
    """Upstream's logits for frames 0..T-1 of `tokens`, one frame (and one depformer stage) at a time."""
    data = config.data
    state = model.init_state(BATCH, torch.device("cpu"), config.runtime.max_context_steps)
    actions, firsts, depths = [], [], []
    for t in range(FRAMES):
        step = tokens[:, :, t : t + 1].clone()
        if unconditional is not None:
            step[unconditional, 0] = data.text_zero_token_id
            step[unconditional, 1] = data.text_pad_token_id
        positions = torch.full((BATCH, 1), t, dtype=torch.long)
        hidden, action, cb0 = model.step_text(step, positions, state)
        state.depformer.reset()
        stages = []
        for stage in range(model.depformer.num_depth):
            logits = model.step_audio_stage(
                stage, tokens[:, 2 + stage, t + 1], hidden, state, tokens[:, 0, t + 1], tokens[:, 1, t + 1]
            )
            stages.append(logits.reshape(BATCH, -1))
        actions.append(action[:, 0])
        firsts.append(cb0[:, 0])
        depths.append(torch.stack(stages, dim=1))
    return torch.stack(actions, 1), torch.stack(firsts, 1), torch.stack(depths, 1)


# The stand-in tokenizer's specials: bos, [S1], [S2]; the config's pad, new word and zero are 3, 4, 7.
IDS = {"bos": 1, "spk1": 5, "spk2": 6, "pad": 3, "new_word": 4, "zero": 7}
SCRIPT = '[S1] Hello there, friend. <break time="0.4s"/> [S2] Oh: hi! [S1] It’s been ages.'
WORDS = [("Well", 0.30, 0.52), ("hello", 0.61, 1.02), ("again", 1.10, 1.48), ("everybody", 2.05, 2.71)]
FRAME_RATE = 12.5


def stand_in_ids(text: str) -> list[int]:
    """Token ids for the rules to work on: a speaker tag is its own id, every other word one id per three
    characters (so words differ in length), from 10 up."""
    ids = []
    for word in text.split():
        if word in ("[S1]", "[S2]"):
            ids.append(IDS["spk1"] if word == "[S1]" else IDS["spk2"])
        else:
            ids += [10 + (sum(map(ord, word)) + i) % 38 for i in range(0, len(word), 3)]
    return ids


class StandInTokenizer:
    """`stand_in_ids` as upstream calls a tokenizer; what it was asked is kept for the fixture."""

    asked: dict[str, list[int]] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.asked[text] = stand_in_ids(text)
        return stand_in_ids(text)

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"[S1]": IDS["spk1"], "[S2]": IDS["spk2"]}[token]


def script_cases() -> dict:
    from dia2.runtime.script_parser import parse_script
    from dia2.runtime.state_machine import StateMachine, TokenIds
    from dia2.runtime.voice_clone import WhisperWord, words_to_entries

    token_ids = TokenIds(card=48, new_word=4, pad=3, bos=1, zero=7, spk1=5, spk2=6, audio_pad=33, audio_bos=32)
    entries = parse_script([SCRIPT], StandInTokenizer(), token_ids, FRAME_RATE)
    timed, starts = words_to_entries(
        words=[WhisperWord(*w) for w in WORDS], tokenizer=StandInTokenizer(), speaker_token=5, frame_rate=FRAME_RATE
    )
    forced_steps = [step + 3 for step in starts]  # build_prefix_plan's offset for the first speaker
    frames = 40
    generator = torch.Generator().manual_seed(2)
    free_actions = torch.randint(0, 2, (60,), generator=generator).tolist()
    runs = {}
    for ahead in (0, 1):
        machine = StateMachine(token_ids, second_stream_ahead=ahead, max_padding=6, initial_padding=2)
        state = machine.new_state([*timed, *entries])
        forced = [list(machine.process(t, state, 4 if t in forced_steps else 3, is_forced=True)) for t in range(frames)]
        free = [list(machine.process(frames + i, state, a)) for i, a in enumerate(free_actions)]
        runs[str(ahead)] = {"forced": forced, "free": free, "end_step": state.end_step, "said": state.transcript}
    return {
        "ids": IDS,
        "encoded": StandInTokenizer.asked,
        "frame_rate": FRAME_RATE,
        "script": SCRIPT,
        "entries": [[e.tokens, e.text, e.padding] for e in entries],
        "words": WORDS,
        "timed": [[e.tokens, e.text, e.padding] for e in timed],
        "starts": starts,
        "forced_frames": frames,
        "free_actions": free_actions,
        "runs": runs,
    }


GENERATED = "[S1] Hi there. [S2] Oh, hi!"
GUIDANCE = {"off": (1.0, 50), "default": (2.0, 50), "narrow": (3.0, 4)}


def generation_cases(model, config) -> dict:
    from dia2.audio.grid import undelay_frames
    from dia2.generation import GenerationConfig, SamplingConfig
    from dia2.runtime.context import RuntimeContext
    from dia2.runtime.generator import build_initial_state, run_generation_loop
    from dia2.runtime.script_parser import parse_script
    from dia2.runtime.state_machine import StateMachine, TokenIds

    data = config.data
    constants = TokenIds(card=48, new_word=4, pad=3, bos=1, zero=7, spk1=5, spk2=6, audio_pad=33, audio_bos=32)
    delays = list(data.delay_pattern)
    cases = {}
    for name, (scale, filter_k) in GUIDANCE.items():
        machine = StateMachine(constants, second_stream_ahead=data.second_stream_ahead, max_padding=6)
        runtime = RuntimeContext(
            config=config,
            model=model,
            precision=model.precision,
            tokenizer=StandInTokenizer(),
            mimi=None,
            device=torch.device("cpu"),
            machine=machine,
            transformer_step=model.transformer.forward_step,
            depformer_step=model.depformer.forward_step,
            constants=constants,
            audio_delays=delays,
            audio_delay_tensor=torch.tensor(delays),
            frame_rate=FRAME_RATE,
        )
        greedy = SamplingConfig(temperature=0.0, top_k=50)
        settings = GenerationConfig(text=greedy, audio=greedy, cfg_scale=scale, cfg_filter_k=filter_k)
        machine.initial_padding = settings.initial_padding
        state = machine.new_state(parse_script([GENERATED], runtime.tokenizer, constants, FRAME_RATE))
        first_word, buffer = run_generation_loop(
            runtime, state=state, generation=build_initial_state(runtime), config=settings
        )
        codes = undelay_frames(buffer[0], delays, constants.audio_pad)
        cases[name] = {
            "guidance": [scale, filter_k],
            "codes": codes.tolist(),
            "first_word": first_word,
            "end_step": state.end_step,
            "said": state.transcript,
        }
    cases["prefix"] = prefix_case(runtime, constants, delays)
    return {"script": GENERATED, "encoded": StandInTokenizer.asked, "cases": cases}


SECOND_SPEAKER = [("Yes", 0.20, 0.50), ("indeed", 0.60, 1.10)]


def prefix_case(runtime, constants, delays) -> dict:
    """Greedy generation with guidance after a two-speaker voice prefix (random codes, timed words), as
    `Dia2.generate` runs one: the plan, the forced warm-up, then the loop from the prefix's last frame."""
    from dia2.audio.grid import undelay_frames
    from dia2.generation import GenerationConfig, SamplingConfig
    from dia2.runtime.generator import build_initial_state, run_generation_loop, warmup_with_prefix
    from dia2.runtime.script_parser import parse_script
    from dia2.runtime.voice_clone import PrefixPlan, WhisperWord, words_to_entries

    generator = torch.Generator().manual_seed(5)
    speakers = []
    for words, speaker, frames in ((WORDS, constants.spk1, 36), (SECOND_SPEAKER, constants.spk2, 16)):
        entries, starts = words_to_entries(
            words=[WhisperWord(*w) for w in words],
            tokenizer=StandInTokenizer(),
            speaker_token=speaker,
            frame_rate=FRAME_RATE,
        )
        codes = torch.randint(0, 32, (len(delays), frames), generator=generator)
        speakers.append((words, entries, starts, codes))
    (_, entries1, starts1, codes1), (_, entries2, starts2, codes2) = speakers
    plan = PrefixPlan(
        entries=[*entries1, *entries2],
        new_word_steps=[s + 3 for s in starts1] + [s + codes1.shape[1] for s in starts2],
        aligned_tokens=torch.cat((codes1, codes2), dim=1),
        aligned_frames=codes1.shape[1] + codes2.shape[1],
    )
    greedy = SamplingConfig(temperature=0.0, top_k=50)
    settings = GenerationConfig(text=greedy, audio=greedy, cfg_scale=2.0, cfg_filter_k=50)
    runtime.machine.initial_padding = settings.initial_padding
    state = runtime.machine.new_state(
        [*plan.entries, *parse_script([GENERATED], runtime.tokenizer, constants, FRAME_RATE)]
    )
    generation = build_initial_state(runtime, prefix=plan)
    start = warmup_with_prefix(runtime, plan, state, generation)
    first_word, buffer = run_generation_loop(
        runtime, state=state, generation=generation, config=settings, start_step=start
    )
    whole = undelay_frames(buffer[0], delays, constants.audio_pad)
    crop = max(first_word, 0)
    cropped = whole[:, crop:] if 0 < crop < whole.shape[-1] else whole
    return {
        "speakers": [[words, codes.tolist()] for words, _, _, codes in speakers],
        "guidance": [2.0, 50],
        "codes": cropped.tolist(),
        "whole": whole.tolist(),
        "said": state.transcript,
    }


if __name__ == "__main__":
    main()
