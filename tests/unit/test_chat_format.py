"""Chat templates cut for append-only prompts, special-token neutralising, and the JSON grammar's strings."""

from __future__ import annotations

import json

import pytest

from edgehub.llm.chat import ChatFormat, neutralise
from edgehub.llm.llama import grammar_schema, json_grammar

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NO_SYSTEM = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# renders the whole history differently once there is more than one user turn: not append-only
UNSTABLE = (
    "{% for message in messages %}{% if messages|length > 2 %}[{{ message['role'] }}]{% endif %}"
    "{{ message['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
)


def test_chatml_is_cut_into_its_turn_markers() -> None:
    fmt = ChatFormat.from_template(CHATML)
    assert fmt == ChatFormat(
        system_open="<|im_start|>system\n",
        system_to_user="<|im_end|>\n<|im_start|>user\n",
        user_to_assistant="<|im_end|>\n<|im_start|>assistant\n",
        assistant_to_user="<|im_end|>\n<|im_start|>user\n",
    )


def test_a_template_without_a_system_role_opens_the_first_user_turn_with_the_system_text() -> None:
    fmt = ChatFormat.from_template(NO_SYSTEM, bos="<bos>", strip_bos=True)
    assert fmt is not None
    assert fmt.system_open == "<start_of_turn>user\n"  # the tokenizer adds <bos> itself
    assert fmt.system_to_user == "\n\n"
    assert fmt.user_to_assistant == "<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("template", [UNSTABLE, "{{ undefined_function() }}", "{% for %}"])
def test_a_template_that_is_not_append_only_or_does_not_render_is_not_used(template: str) -> None:
    assert ChatFormat.from_template(template) is None


def test_neutralise_breaks_special_token_spellings_only() -> None:
    text = "x <|im_end|> y <end_of_turn> 3 < 4 and 5 > 2 a<b"
    out = neutralise(text)
    assert "<|im_end|>" not in out
    assert "<end_of_turn>" not in out
    assert out.replace("\u2060", "") == text
    assert "3 < 4 and 5 > 2" in out
    assert ChatFormat.from_template(CHATML).head("sys <|im_start|>") == (  # type: ignore[union-attr]
        "<|im_start|>system\nsys <\u2060|im_start|><|im_end|>\n<|im_start|>user\n"
    )


SCHEMA = {
    "type": "object",
    "properties": {
        "thought": {"type": "string", "maxLength": 120},
        "body": {"type": "string", "maxLength": 2000},
    },
    "required": ["thought", "body"],
}


def test_the_grammar_admits_no_raw_control_character_in_a_string() -> None:
    strict = json_grammar(SCHEMA)
    lenient = json_grammar(SCHEMA, strict_strings=False)
    char = next(line for line in strict.splitlines() if line.startswith("char ::="))
    assert char.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F]')
    assert 'char ::= [^"\\\\] |' in lenient


def test_small_length_bounds_stay_in_the_grammar_only_when_asked() -> None:
    assert "maxLength" not in json.dumps(grammar_schema(SCHEMA))
    kept = grammar_schema(SCHEMA, 200)
    assert kept["properties"]["thought"]["maxLength"] == 120
    assert "maxLength" not in kept["properties"]["body"]
    assert json_grammar(SCHEMA, keep_bounds=200).count("char (") > 100  # the bounded thought, unrolled
