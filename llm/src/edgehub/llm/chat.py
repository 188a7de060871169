"""A model's own chat template, cut into the pieces an append-only prompt is made of.

Instruction-tuned GGUFs carry their chat template (``tokenizer.chat_template``, Jinja); base models do
not, and are prompted with a plain transcript instead. The agent's prompt must only grow between steps
(the brain then evaluates only the new tokens), so rather than re-rendering the whole conversation each
step, the template is rendered once with marker messages and cut at the markers into:

    system_open  SYSTEM  system_to_user  TASK  user_to_assistant  ACTION  assistant_to_user  OBSERVATION
    user_to_assistant  ACTION ...

``ChatFormat.from_template`` checks that the template really is append-only in that sense (a prompt for
one more turn starts with the prompt for one fewer) and returns None when it is not, or when it cannot
be rendered: the caller then falls back to the transcript format.

Chat prompts contain the template's special tokens as text, so the brain must tokenize them with
special-token parsing on; ``neutralise`` keeps text from a goal, a file or a tool's output from spelling
such a token (a prompt-injection path).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("edgehub.llm.chat")
_MARK = "\x02{}\x03"
_SPECIAL = re.compile(r"<(?=[^\s<>]{1,48}>)")
_WORD_JOINER = "\u2060"


def neutralise(text: str) -> str:
    """``text`` with every ``<...>`` that could spell a special token broken by an invisible character."""
    return _SPECIAL.sub("<" + _WORD_JOINER, text)


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """The pieces of a chat template around each kind of turn (see the module docstring)."""

    system_open: str
    system_to_user: str
    user_to_assistant: str
    """Closes a user turn and opens the assistant's: also the cue the model continues after."""
    assistant_to_user: str

    def head(self, system: str) -> str:
        return self.system_open + neutralise(system.strip()) + self.system_to_user

    @classmethod
    def from_template(
        cls, template: str, *, bos: str = "", eos: str = "", strip_bos: bool = False
    ) -> ChatFormat | None:
        """The template's pieces, or None when it cannot be rendered or is not append-only.
        ``strip_bos``: the tokenizer adds BOS itself, so a rendered leading ``bos`` is dropped."""
        try:
            return cls._cut(template, bos, eos, strip_bos)
        except Exception as exc:  # a template is code from the model file: any failure means "not usable"
            log.warning("the model's chat template is not usable (%s: %s)", type(exc).__name__, exc)
            return None

    @classmethod
    def _cut(cls, template: str, bos: str, eos: str, strip_bos: bool) -> ChatFormat | None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        render = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

        def text(messages: list[dict[str, Any]]) -> str:
            out = str(render(messages=messages).prompt)  # type: ignore[arg-type]
            return out[len(bos) :] if strip_bos and bos and out.startswith(bos) else out

        m = [_MARK.format(i) for i in range(4)]
        try:
            full = text(_conversation(m, system_role=True))
            merged = False
        except Exception:  # templates that refuse a system role: the system text opens the first user turn
            full = text(_conversation(m, system_role=False))
            merged = True
        pieces = _split(full, m)
        if pieces is None:
            return None
        fmt = cls(pieces[0], pieces[1], pieces[4], pieces[3])
        if pieces[2] != pieces[4]:  # the cue must be what a finished assistant turn was opened with
            return None
        shorter = text(_conversation(m[:2], system_role=not merged))
        expected = fmt.system_open + m[0] + fmt.system_to_user + m[1] + fmt.user_to_assistant
        return fmt if shorter == expected else None


def _conversation(m: list[str], *, system_role: bool) -> list[dict[str, Any]]:
    if system_role:
        messages = [{"role": "system", "content": m[0]}, {"role": "user", "content": m[1]}]
    else:
        messages = [{"role": "user", "content": m[0] + "\n\n" + m[1]}]
    if len(m) > 2:
        messages += [{"role": "assistant", "content": m[2]}, {"role": "user", "content": m[3]}]
    return messages


def _split(full: str, marks: list[str]) -> list[str] | None:
    """The text before, between and after ``marks`` (each exactly once, in order)."""
    pieces, rest = [], full
    for mark in marks:
        if rest.count(mark) != 1:
            return None
        before, rest = rest.split(mark)
        pieces.append(before)
    return [*pieces, rest]


def chat_format_of(llm: Any) -> ChatFormat | None:
    """The chat format of a loaded (or vocabulary-only) llama-cpp-python ``Llama``; None for a GGUF
    without a template (a base model) or with one that cannot be used."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    bos = _token_text(llm, llm.token_bos())
    eos = _token_text(llm, llm.token_eos())
    adds_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
    return ChatFormat.from_template(str(template), bos=bos, eos=eos, strip_bos=adds_bos)


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode(errors="replace")
