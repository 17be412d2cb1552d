"""Prompt enhancer: tokens per second of our generation loop vs transformers' `generate`, same model.

Three sides generate the same tokens from the same chat input (HunyuanImage 2.1's official instruction as
the system message, a user prompt, the tiny chat tokenizer's template; model_defs/prompt_enhancer):
* generate: transformers' `model.generate` after torch.manual_seed(seed), with SamplingSettings'
  generate_kwargs (what the tests compare token for token), on the transformers model;
* ours: generate_tokens (model_defs/prompt_enhancer/generation.py, the node's loop: key/value cache, the
  logits processors in generate's order, a seeded generator) on that same model object, so the difference
  is the loop alone;
* ours_node: generate_tokens on the model as the node loads it (load_enhancer on a Hugging Face folder
  written from the same model: transformers' class with its Linear and Embedding layers replaced by the
  pack's operations, weights cast per use).
No stop token ends a run (ours gets no stop ids, generate's generation config no eos_token_id), so every
run makes exactly max_new_tokens tokens; the table says whether the three token lists are equal (they are
when the loop matches generate, as tests/test_prompt_enhancer.py requires).

Models (random weights, seeded; transformers' own classes from tools/tiny_models.tiny_chat_lm_config):
* tiny-qwen2, tiny-hunyuan: the tests' tiny chat LMs (hidden 64, 2 layers, 4 heads / 2 key-value heads,
  vocabulary 501: the tiny tokenizer's), where the per-token work outside the network dominates;
* hunyuan-512: the HunyuanImage 2.1 reprompt model's architecture (Hunyuan dense: q/k norms, NTK-alpha
  RoPE, tied embeddings) at hidden 512, 4 layers, 8 heads of 64 / 2 key-value heads, MLP 2048, and a
  vocabulary of 32768 (the tokenizer's 501 ids and unused rows: the logits processors' per-token work over
  the vocabulary, a sort for top-p, is then closer to the real models' 128k-152k than with 501).
All with max_position_embeddings 4096 (the tests' 1024 is less than the longest prompt plus 256 tokens).
Prompts: "short" ("a cat on a red chair": 686 tokens with the instruction) and "long" (a ~1500-character
prompt: 1280 tokens), max_new_tokens 64 and 256. Settings: greedy (temperature 0, no penalty: the
official HunyuanImage 2.1 call before its sampling commit, PromptEnhancer's default) and the official
sampling (temperature 0.7, top_k 20, top_p 0.8, repetition_penalty 1.05: Hunyuan-7B's recommendation, the
node's defaults), seed 649151.

Time: every side's run is paired with one of generate's, back to back in alternating order; the ratio
ours/generate is the median of those paired ratios of process CPU time (bench/common.paired_times: other
jobs on a shared machine change it less than wall time), next to the ratio of the fastest CPU times
(interference only adds time) and the wall-time ratio; tokens/s = new tokens / median wall time of one
whole call (the prompt's forward included). Decode ms/token (per side, model, prompt and settings) = (time
at 256 - time at 64) / 192, of CPU and of wall time: the cost of one more token, the prompt's forward
cancelled out. Memory: the peak resident memory above the level before one call (max_new_tokens 256,
official sampling), in a fresh process per model, prompt and side (common.run_child with MEMORY_ENV);
weights not counted. CPU, fp32, 2 threads, OMP_WAIT_POLICY=PASSIVE.

This bench found that the loop ran the output layer over the whole prompt (peak memory 167 MB against
generate's 46 MB for hunyuan-512's long prompt, its prompt forward up to 20% slower); generation.py now
passes logits_to_keep=1 as generate does (tests/test_prompt_enhancer_logits.py).

Prints a table and, last, one JSON line with every figure. Never asserts on time.

    .venv/bin/python bench/bench_prompt_enhancer.py [MODEL ...] [--repeats N]   # about 20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from common import MEMORY_ENV, import_pack, main_or_memory_child, paired_times, run_child

import_pack()

from comfyui_mmdit.loaders.tokenizers import load_tokenizer  # noqa: E402
from comfyui_mmdit.model_defs.prompt_enhancer import (  # noqa: E402
    SamplingSettings, chat_input_ids, generate_tokens, instruction_for, load_enhancer,
)
from comfyui_mmdit.tools.tiny_models import tiny_chat_lm_config  # noqa: E402
from comfyui_mmdit.tools.tiny_tokenizer import write_tiny_chat_tokenizer  # noqa: E402

MODELS = {  # name: (kind, overrides of the tiny chat LM's config)
    "tiny-qwen2": ("qwen2", {}),
    "tiny-hunyuan": ("hunyuan", {}),
    "hunyuan-512": ("hunyuan", {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4,
                                "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32768}),
}
MAX_POSITIONS = 4096
PROMPTS = {
    "short": "a cat on a red chair",
    "long": " ".join(["a photo of a cat sitting on a red chair by a window, morning light on the wooden floor, "
                      "a green plant in a blue pot, highly detailed, cinematic lighting"] * 10),
}
TARGET = "HunyuanImage 2.1"
SEED = 649151
SETTINGS = {
    "greedy": SamplingSettings(temperature=0.0, seed=SEED),
    "official": SamplingSettings(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05, seed=SEED),
}
NEW_TOKENS = (64, 256)
SIDES = ("generate", "ours", "ours_node")
MEMORY_CASE = ("official", 256)  # the settings and max_new_tokens of the memory measurements


def build_model(name: str, folder: Path):
    """(transformers model, tokenizer, Hugging Face folder holding the model) for MODELS[name], seed 0."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, overrides = MODELS[name]
    tokenizer_dir = write_tiny_chat_tokenizer(folder / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir)
    config = tiny_chat_lm_config(kind, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.update(max_position_embeddings=MAX_POSITIONS, **overrides)
    if "head_dim" in config:
        config["head_dim"] = config["attention_head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    (folder / "config").mkdir()
    (folder / "config" / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder / "config", local_files_only=True))
    model.eval()
    model_dir = folder / "model"
    model.save_pretrained(model_dir)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, model_dir / file.name)
    model.generation_config.eos_token_id = None  # generate runs to max_new_tokens, as ours without stop ids
    return model, tokenizer, model_dir


def input_ids(tokenizer, prompt: str) -> torch.Tensor:
    return torch.tensor([chat_input_ids(tokenizer, instruction_for(TARGET).messages(PROMPTS[prompt]))])


def side_call(side: str, model, ids: torch.Tensor, settings: SamplingSettings):
    """One whole generation of `side`, returning the new token ids."""
    if side == "generate":
        kwargs = settings.generate_kwargs()
        mask = torch.ones_like(ids)

        @torch.no_grad()
        def run():
            torch.manual_seed(settings.seed)
            return model.generate(ids, attention_mask=mask, pad_token_id=0, **kwargs)[0, ids.shape[1]:].tolist()
        return run

    def run():
        return generate_tokens(model, ids, settings, stop_ids=()).tokens
    return run


class Models:
    """The three sides' models of one MODELS entry (the folder is written and loaded once)."""

    def __init__(self, name: str):
        self._scratch = tempfile.TemporaryDirectory(prefix="bench-enhancer-")
        self.model, self.tokenizer, folder = build_model(name, Path(self._scratch.name))
        self.loaded = load_enhancer(folder).model

    def for_side(self, side: str):
        return self.loaded if side == "ours_node" else self.model

    def close(self) -> None:
        self._scratch.cleanup()


def build(which: str):
    """The memory child's callable: `SIDE,MODEL,PROMPT` at MEMORY_CASE."""
    side, name, prompt = which.split(",")
    models = Models(name)
    settings_name, new_tokens = MEMORY_CASE
    settings = replace(SETTINGS[settings_name], max_new_tokens=new_tokens)
    call = side_call(side, models.for_side(side), input_ids(models.tokenizer, prompt), settings)
    call.models = models  # the written folder lives as long as the callable
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"models (default all): {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs per side and case (default 5)")
    args = parser.parse_args()
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(2)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the tiny Hunyuan config's RoPE keys, save progress bars
    transformers_logging.disable_progress_bar()

    rows, decode, memory_rows = [], [], []
    load = [os.getloadavg()[0]]
    for name in args.models or list(MODELS):
        models = Models(name)
        parameters = sum(p.numel() for p in models.model.parameters())
        for prompt in PROMPTS:
            ids = input_ids(models.tokenizer, prompt)
            for settings_name, base in SETTINGS.items():
                wall, cpu = {}, {}
                for new_tokens in NEW_TOKENS:
                    settings = replace(base, max_new_tokens=new_tokens)
                    calls = {side: side_call(side, models.for_side(side), ids, settings) for side in SIDES}
                    tokens = {side: call() for side, call in calls.items()}
                    samples = {}
                    timing = paired_times(calls, "generate", repeats=args.repeats, samples_out=samples)
                    best = {side: min(samples["cpu"][side]) for side in SIDES}
                    cpu_times, ratios = timing["cpu"]
                    wall_times, wall_ratios = timing["wall"]
                    wall[new_tokens], cpu[new_tokens] = wall_times, cpu_times
                    rows.append(dict(
                        model=name, parameters=parameters, prompt=prompt, prompt_tokens=ids.shape[1],
                        settings=settings_name, new_tokens=new_tokens,
                        same_tokens=all(tokens[side] == tokens["generate"] for side in SIDES)
                        and len(tokens["generate"]) == new_tokens,
                        **{f"{side}_tokens_per_s": new_tokens / wall_times[side] for side in SIDES},
                        **{f"{side}_wall_s": wall_times[side] for side in SIDES},
                        **{f"{side}_cpu_s": cpu_times[side] for side in SIDES},
                        **{f"{side}_time_ratio": ratios[side] for side in SIDES[1:]},
                        **{f"{side}_best_ratio": best[side] / best["generate"] for side in SIDES[1:]},
                        **{f"{side}_wall_ratio": wall_ratios[side] for side in SIDES[1:]},
                    ))
                    print(f"{name} {prompt} {settings_name} {new_tokens} done", flush=True)
                short, long = NEW_TOKENS
                decode.append(dict(model=name, prompt=prompt, settings=settings_name, **{
                    f"{side}_decode_{clock}_ms_per_token":
                        (times[long][side] - times[short][side]) / (long - short) * 1000
                    for side in SIDES for clock, times in (("wall", wall), ("cpu", cpu))}))
            memory_rows.append(dict(model=name, prompt=prompt, **{
                f"{side}_peak_mb": run_child(__file__, "--memory", f"{side},{name},{prompt}",
                                             env=MEMORY_ENV)["peak_extra_mb"] for side in SIDES}))
        models.close()
        load.append(os.getloadavg()[0])

    print(f"\nCPU, {torch.get_num_threads()} threads, fp32; {args.repeats} pairs per row, each side paired with "
          f"generate (time x: median of the paired ratios of CPU time; wall x: of wall time); load average "
          f"{', '.join(f'{x:.1f}' for x in load)}")
    header = (f"{'model':12s} {'prompt':>6s} {'in':>5s} {'settings':>8s} {'new':>4s} {'generate t/s':>12s} "
              f"{'ours t/s':>9s} {'node t/s':>9s} {'ours x':>7s} {'node x':>7s} {'ours bx':>7s} {'node bx':>7s} "
              f"{'ours wx':>7s} {'node wx':>7s} "
              f"{'same':>5s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:12s} {r['prompt']:>6s} {r['prompt_tokens']:5d} {r['settings']:>8s} {r['new_tokens']:4d} "
              f"{r['generate_tokens_per_s']:12.1f} {r['ours_tokens_per_s']:9.1f} {r['ours_node_tokens_per_s']:9.1f} "
              f"{r['ours_time_ratio']:7.3f} {r['ours_node_time_ratio']:7.3f} {r['ours_best_ratio']:7.3f} "
              f"{r['ours_node_best_ratio']:7.3f} {r['ours_wall_ratio']:7.3f} "
              f"{r['ours_node_wall_ratio']:7.3f} {'yes' if r['same_tokens'] else 'NO':>5s}")
    print("in: prompt tokens (instruction + prompt); t/s: new tokens per second of wall time, the prompt's forward "
          "included; ours x / node x: time ours / generate (CPU time, median of paired ratios), bx: of the fastest "
          "CPU times, wx: wall time (median of paired ratios); "
          "same: all three made the same max_new_tokens tokens")
    print(f"\ndecode: ms per extra token, (time at {NEW_TOKENS[1]} - time at {NEW_TOKENS[0]}) / "
          f"{NEW_TOKENS[1] - NEW_TOKENS[0]}, of CPU time (the work) and of wall time")
    print(f"{'model':12s} {'prompt':>6s} {'settings':>8s} {'generate cpu':>12s} {'ours cpu':>9s} {'node cpu':>9s} "
          f"{'generate wall':>13s} {'ours wall':>9s} {'node wall':>9s}")
    for d in decode:
        print(f"{d['model']:12s} {d['prompt']:>6s} {d['settings']:>8s} "
              + " ".join(f"{d[f'{side}_decode_{clock}_ms_per_token']:{width}.2f}" for clock in ("cpu", "wall")
                         for side, width in zip(SIDES, (12 if clock == "cpu" else 13, 9, 9))))
    print(f"\npeak resident memory above the level before one call (MB; max_new_tokens {MEMORY_CASE[1]}, "
          f"{MEMORY_CASE[0]} sampling, fresh process each)")
    print(f"{'model':12s} {'prompt':>6s} {'generate':>9s} {'ours':>7s} {'node':>7s}")
    for m in memory_rows:
        print(f"{m['model']:12s} {m['prompt']:>6s} {m['generate_peak_mb']:9.1f} {m['ours_peak_mb']:7.1f} "
              f"{m['ours_node_peak_mb']:7.1f}")
    print(json.dumps(dict(bench="prompt_enhancer", device=f"CPU, {torch.get_num_threads()} threads",
                          dtype="torch.float32", repeats=args.repeats, target=TARGET,
                          models={name: {"kind": kind, **overrides} for name, (kind, overrides) in MODELS.items()},
                          settings={name: asdict(s) for name, s in SETTINGS.items()}, load_average=load,
                          rows=rows, decode=decode, memory=memory_rows)))


if __name__ == "__main__":
    main_or_memory_child(main, build)
