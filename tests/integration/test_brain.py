"""The llama.cpp brain on the real model: grammar-constrained JSON, exact prefix reuse."""

from __future__ import annotations

import json

import pytest
from jsonschema import validate

from edgehub.llm import LlamaSettings, packaged_model_path
from edgehub.llm.llama import LlamaBrain

pytestmark = pytest.mark.model

SCHEMA = {
    "type": "object",
    "properties": {"thought": {"type": "string", "maxLength": 80}, "tool": {"enum": ["read_file", "finish"]}},
    "required": ["thought", "tool"],
    "additionalProperties": False,
}
PROMPT = "# Transcript\nThe agent answers with one JSON action.\nGoal: read notes.txt\nStep 1 action: "


def test_grammar_constrained_output_is_valid_json_for_the_schema(brain: LlamaBrain) -> None:
    out = brain.complete(PROMPT, json_schema=SCHEMA, max_tokens=64)
    action = json.loads(out.text)
    validate({**action, "thought": action["thought"][:80]}, SCHEMA)
    assert out.stop_reason == "stop"
    assert out.completion_tokens > 0


GEMMA = "gemma-3-270m-q4_k_m"


def test_prefix_reuse_evaluates_only_new_tokens_and_changes_no_output(llama_settings: LlamaSettings) -> None:
    """On Gemma 3 270M. llama.cpp's sums depend on how a prompt is split into batches, so an output
    evaluated on a reused prefix is not always bit-identical to one from scratch: on Qwen2.5 Coder 0.5B
    this prompt's first word is a near tie that flips ("read" / "Read"). The token counts hold on any
    model; the identical outputs are this model's."""
    llama_settings = LlamaSettings(
        path=packaged_model_path(GEMMA),
        n_ctx=llama_settings.n_ctx,
        n_threads=2,
        n_batch=llama_settings.n_batch,
    )
    brain = LlamaBrain.open(llama_settings)
    try:
        reused_outputs = _steps(brain)
    finally:
        brain.close()
    _check_from_scratch(llama_settings, reused_outputs)


def _steps(brain: LlamaBrain) -> list[str]:
    prompt, previous, reused_outputs = PROMPT, "", []
    for step in range(1, 4):
        out = brain.complete(prompt, json_schema=SCHEMA, max_tokens=48)
        if step > 1:
            new_text = prompt[len(previous) :]
            assert out.evaluated_tokens == brain.count_tokens(new_text)
            assert out.evaluated_tokens < out.prompt_tokens / 3
        reused_outputs.append(out.text)
        previous = prompt + out.text
        prompt = previous + f'\nStep {step} observation: "nothing here"\nStep {step + 1} action: '
    return reused_outputs


def _check_from_scratch(llama_settings: LlamaSettings, reused_outputs: list[str]) -> None:
    fresh = LlamaBrain.open(llama_settings)
    try:
        # the same prompts evaluated from scratch each time give the same greedy outputs
        prompt = PROMPT
        for step, expected in enumerate(reused_outputs, start=1):
            fresh.llm.reset()
            fresh._text, fresh._tokens = "", []
            out = fresh.complete(prompt, json_schema=SCHEMA, max_tokens=48)
            assert out.evaluated_tokens == out.prompt_tokens
            assert out.text == expected
            prompt = (
                prompt + out.text + f'\nStep {step} observation: "nothing here"\nStep {step + 1} action: '
            )
    finally:
        fresh.close()


def test_the_confidence_of_the_chosen_tool_is_measured_and_free_text_has_none(brain: LlamaBrain) -> None:
    """The probability of the ``"tool"`` value's tokens before the grammar's mask (``llm.confidence``):
    measured for an action, in (0, 1]; not for free text."""
    out = brain.complete(PROMPT, json_schema=SCHEMA, max_tokens=64)
    assert out.confidence is not None
    assert 0.0 < out.confidence <= 1.0
    assert brain.complete(PROMPT, max_tokens=8).confidence is None
