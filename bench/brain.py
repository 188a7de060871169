"""bench/brain: the edge brain's decoding speed beside raw llama-cpp-python, and prefix reuse.

(a) tokens/s while decoding: raw ``Llama.create_completion`` (streamed) and ``LlamaBrain.complete`` on the
    same model file, prompt, threads and greedy sampling, no grammar; both timed from the first generated
    token to the last, runs alternated, median. Target: brain >= 0.95 x raw.
(b) a 6-step ReAct transcript (the prompt grows by the completion and an observation each step): prompt
    tokens evaluated per step with prefix reuse vs a stateless call that evaluates the whole prompt, and
    the prompt-evaluation time of each. Target: with reuse a step evaluates only its new tokens (at most
    one more: the previous completion's last token when it stopped at max_tokens).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK, Check, median, print_checks, print_table, write_result
from llama_cpp import Llama

from edgehub.llm import LlamaSettings, default_model_path
from edgehub.llm.llama import LlamaBrain

THREADS = 2
TOKENS = 48 if QUICK else 128
RUNS = 3 if QUICK else 7
STEPS = 4 if QUICK else 6
PROMPT = "The history of the city begins in the early middle ages, when"


def raw_rate(llm: Llama) -> float:
    llm.reset()
    times = []
    for _ in llm.create_completion(PROMPT, max_tokens=TOKENS, temperature=0.0, top_k=1, stream=True):
        times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


def brain_rate(brain: LlamaBrain) -> float:
    brain.llm.reset()
    brain._text, brain._tokens = "", []
    out = brain.complete(PROMPT, max_tokens=TOKENS)
    return (out.completion_tokens - 1) / (out.decode_ms / 1000)


def throughput(cfg: LlamaSettings) -> tuple[float, float]:
    raw = Llama(
        model_path=str(default_model_path()),
        n_ctx=cfg.n_ctx,
        n_threads=THREADS,
        n_batch=cfg.n_batch,
        verbose=False,
    )
    brain = LlamaBrain.open(cfg)
    raw_rates, brain_rates = [], []
    for _ in range(RUNS):
        raw_rates.append(raw_rate(raw))
        brain_rates.append(brain_rate(brain))
    raw.close()
    brain.close()
    return median(raw_rates), median(brain_rates)


def transcript(cfg: LlamaSettings) -> tuple[list[int], list[int], list[int], list[float], list[float]]:
    """Per step after the first: new tokens, evaluated with / without reuse, eval ms with / without."""
    reuse, fresh = LlamaBrain.open(cfg), LlamaBrain.open(cfg)
    prompt = (
        "# Edge agent transcript\nGoal: tidy the logs folder and report what was removed.\nStep 1 action: "
    )
    new, ev_reuse, ev_fresh, ms_reuse, ms_fresh = [], [], [], [], []
    previous = ""
    for step in range(1, STEPS + 1):
        a = reuse.complete(prompt, max_tokens=24)
        fresh.llm.reset()
        fresh._text, fresh._tokens = "", []
        b = fresh.complete(prompt, max_tokens=24)
        if step > 1:
            new.append(reuse.count_tokens(prompt[len(previous) :]))
            ev_reuse.append(a.evaluated_tokens)
            ev_fresh.append(b.evaluated_tokens)
            ms_reuse.append(a.eval_ms)
            ms_fresh.append(b.eval_ms)
        previous = prompt + a.text
        observation = f'"removed {step} old files: app-{step}.log, worker-{step}.log; {step * 3} MB freed"'
        prompt = previous + f"\nStep {step} observation: {observation}\nStep {step + 1} action: "
    reuse.close()
    fresh.close()
    return new, ev_reuse, ev_fresh, ms_reuse, ms_fresh


def main() -> None:
    cfg = LlamaSettings(n_ctx=2048, n_threads=THREADS, n_batch=64)
    raw, brain = throughput(cfg)
    print_table(
        f"decoding, {TOKENS} tokens, {THREADS} threads, greedy, median of {RUNS}",
        ["side", "tokens/s"],
        [["raw llama-cpp-python", f"{raw:.1f}"], ["edgehub LlamaBrain", f"{brain:.1f}"]],
    )
    new, ev_reuse, ev_fresh, ms_reuse, ms_fresh = transcript(cfg)
    print_table(
        f"{STEPS}-step transcript: prompt tokens evaluated per step (steps 2..{STEPS})",
        ["side", "evaluated/step (mean)", "prompt eval ms/step (mean)"],
        [
            [
                "with prefix reuse",
                f"{sum(ev_reuse) / len(ev_reuse):.1f}",
                f"{sum(ms_reuse) / len(ms_reuse):.1f}",
            ],
            [
                "without (whole prompt)",
                f"{sum(ev_fresh) / len(ev_fresh):.1f}",
                f"{sum(ms_fresh) / len(ms_fresh):.1f}",
            ],
            ["new tokens per step", f"{sum(new) / len(new):.1f}", ""],
        ],
    )
    ratio = brain / raw
    # with reuse a step evaluates its new tokens, plus the previous step's last sampled token when that
    # step stopped at max_tokens (a sampled token enters the KV cache only when it is evaluated)
    extra = max(e - n for e, n in zip(ev_reuse, new, strict=True))
    checks = [
        Check("brain_vs_raw_tokens_per_s", ratio, "x", ">= 0.95", ratio >= 0.95),
        Check("extra_tokens_evaluated_per_step_with_reuse", extra, "tokens", "<= 1", extra <= 1),
        Check(
            "evaluated_tokens_reuse_vs_without",
            sum(ev_reuse) / sum(ev_fresh),
            "x",
            "< 1 (info)",
            sum(ev_reuse) < sum(ev_fresh),
        ),
    ]
    print_checks(checks)
    print(f"wrote {write_result('brain', checks)}")


if __name__ == "__main__":
    main()
