"""The brain on llama.cpp (llama-cpp-python), with exact prompt-prefix reuse.

The context keeps the exact token sequence it has evaluated. A ReAct step's prompt is the previous
prompt + the completion (verbatim) + new text, so when a prompt starts with the text already in the
context only the new suffix is tokenized and evaluated; tokens are never re-derived from text that
was already evaluated, which keeps the reuse exact at segment boundaries. Any other prompt falls back
to a full tokenization, reusing the longest common token prefix. Outputs are greedy at temperature 0
and identical with or without reuse (a test checks it on the real model).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_grammar import json_schema_to_gbnf

from . import logs
from .base import Completion
from .chat import ChatFormat, chat_format_of
from .confidence import ToolConfidence
from .errors import ModelFileError
from .settings import LlamaSettings, check_model_file

_UNROLLED = ("minLength", "maxLength", "minItems", "maxItems")
LENIENT_CHAR = r'char ::= [^"\\] |'
STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def grammar_schema(schema: Any, keep: int = 0) -> Any:
    """``schema`` without length bounds above ``keep``, for llama.cpp's grammar compiler.

    llama.cpp unrolls ``maxLength: n`` into n nested optional rules and refuses large n; lengths are
    bounded by max_tokens during decoding and validated exactly afterwards (the execution gateway
    checks arguments against the full schema), so the grammar need not carry them. Small bounds may
    stay (``keep``): a bounded ``thought`` is what stops a small model that repeats itself inside a
    string until max_tokens cuts its JSON (issue 18).
    """
    if isinstance(schema, dict):
        return {
            k: grammar_schema(v, keep)
            for k, v in schema.items()
            if k not in _UNROLLED or (isinstance(v, int) and v <= keep)
        }
    if isinstance(schema, list):
        return [grammar_schema(v, keep) for v in schema]
    return schema


GRAMMAR_CACHE = 64


def json_grammar(schema: dict[str, Any], *, strict_strings: bool = True, keep_bounds: int = 0) -> str:
    """The GBNF grammar of ``schema``. llama-cpp-python's converter lets a JSON string hold raw control
    characters (``char ::= [^"\\] | ...``), so a model could write a raw newline inside a string and
    produce JSON no parser accepts ("Invalid control character"); ``strict_strings`` admits only what
    JSON allows there (control characters only as escapes), as llama.cpp's own converter does.
    ``keep_bounds``: length bounds up to this stay in the grammar (``grammar_schema``)."""
    gbnf = json_schema_to_gbnf(json.dumps(grammar_schema(schema, keep_bounds)))
    if not strict_strings:
        return gbnf
    if LENIENT_CHAR in gbnf:
        return gbnf.replace(LENIENT_CHAR, STRICT_CHAR)
    if "char ::=" in gbnf and STRICT_CHAR not in gbnf:  # a converter this code does not know
        raise ValueError("cannot make the grammar's strings strict: unknown char rule")
    return gbnf


def _fingerprint(path: Path, n_ctx: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    h.update(f"{path.stat().st_size}:{n_ctx}".encode())
    return h.hexdigest()[:16]


class LlamaBrain:
    """Brain on one llama.cpp context. Not thread-safe: the daemon's ModelGate serialises calls."""

    def __init__(self, llm: Llama, *, path: Path, settings: LlamaSettings) -> None:
        self.llm = llm
        self.path = path
        self.settings = settings
        self._fingerprint = _fingerprint(path, settings.n_ctx)
        self._text = ""  # text whose exact tokens are self._tokens
        self._tokens: list[int] = []
        self._special = False  # how self._text was tokenized
        self._grammars: dict[str, LlamaGrammar] = {}
        self._chat = chat_format_of(llm)

    @classmethod
    def open(cls, settings: LlamaSettings) -> LlamaBrain:
        """Load the model ``settings`` name (default: ``default_model_path``); ModelFileError if it cannot
        be used."""
        path = check_model_file(settings)
        logs.install()
        mark = logs.errors_seen()
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads or len(os.sched_getaffinity(0)),
                n_batch=settings.n_batch,
                seed=settings.seed,
                logits_all=False,
                verbose=logs.shown(),  # False also silences what the C library prints itself while loading
            )
        except (ValueError, RuntimeError, OSError) as exc:
            said = f": {logs.first_error(mark)}" if logs.first_error(mark) else ""
            raise ModelFileError(
                f"llama.cpp could not load it ({exc}{said}); the file may be truncated or corrupt",
                path=str(path),
            ) from None
        return cls(llm, path=path, settings=settings)

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def chat_format(self) -> ChatFormat | None:
        return self._chat

    def _tokenize(self, text: str, *, bos: bool, special: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=bos, special=special))

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, bos=False))

    def _prompt_tokens(self, prompt: str, special: bool) -> list[int]:
        if self._text and prompt.startswith(self._text) and special == self._special:
            return self._tokens + self._tokenize(prompt[len(self._text) :], bos=False, special=special)
        return self._tokenize(prompt, bos=True, special=special)

    def _trim_cache(self, tokens: list[int]) -> int:
        """Drop cached positions past the common prefix; returns how many prompt tokens are reused."""
        n_past = self.llm.n_tokens
        common = 0
        for a, b in zip(self.llm.input_ids[:n_past].tolist(), tokens, strict=False):
            if a != b:
                break
            common += 1
        if common == len(tokens):
            common -= 1  # the last prompt token is evaluated again to get fresh logits
        if common <= 0 or not self.llm._ctx.kv_cache_seq_rm(-1, common, -1):
            return 0
        return common

    def _grammar(self, schema: dict[str, Any]) -> LlamaGrammar:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if len(self._grammars) >= GRAMMAR_CACHE:  # guided steps make schemas per goal: stay bounded
                self._grammars.clear()
            gbnf = json_grammar(
                schema,
                strict_strings=self.settings.strict_strings,
                keep_bounds=self.settings.grammar_bounds,
            )
            self._grammars[key] = LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[key]

    def complete(
        self,
        prompt: str,
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        special: bool = False,
    ) -> Completion:
        tokens = self._prompt_tokens(prompt, special)
        if len(tokens) + max_tokens > self.n_ctx:
            raise ValueError(
                f"prompt of {len(tokens)} tokens + {max_tokens} to generate exceeds "
                f"the context of {self.n_ctx}"
            )
        started = time.perf_counter()
        reused = self._trim_cache(tokens)
        grammar = self._grammar(json_schema) if json_schema is not None else None
        track = ToolConfidence() if grammar is not None else None
        out, first_at, reason = self._generate(tokens, grammar, max_tokens, stop or [], track)
        done = time.perf_counter()
        text = self.llm.detokenize(out).decode(errors="replace")
        self._text, self._tokens, self._special = prompt + text, tokens + out, special
        first = first_at or done
        return Completion(
            text=text,
            prompt_tokens=len(tokens),
            evaluated_tokens=len(tokens) - reused,
            completion_tokens=len(out),
            eval_ms=(first - started) * 1000,
            decode_ms=(done - first) * 1000,
            stop_reason=reason,
            confidence=track.value if track is not None else None,
        )

    def _logprob(self, token: int) -> float:
        """Log-probability of ``token`` under the last position's logits (before any grammar mask):
        the row llama.cpp sampled it from, still in place until the next token is evaluated."""
        n_vocab = self.llm.n_vocab()
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(n_vocab,))
        top = float(logits.max())
        return float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))

    def _generate(
        self,
        tokens: list[int],
        grammar: LlamaGrammar | None,
        max_tokens: int,
        stop: list[str],
        track: ToolConfidence | None = None,
    ) -> tuple[list[int], float | None, str]:
        out: list[int] = []
        first_at = None
        temp = self.settings.temperature
        gen = self.llm.generate(
            tokens, temp=temp, top_k=1 if temp == 0 else 40, repeat_penalty=1.0, grammar=grammar
        )
        for token in gen:
            first_at = first_at or time.perf_counter()
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
                return out, first_at, "stop"
            if track is not None:
                logprob = self._logprob(token) if track.in_value() else None
                track.add(self.llm.detokenize([token]), logprob)
            out.append(token)
            if stop and any(s in self.llm.detokenize(out).decode(errors="ignore") for s in stop):
                return out, first_at, "stop"
            if len(out) >= max_tokens:
                return out, first_at, "length"
        return out, first_at, "stop"

    def close(self) -> None:
        self.llm.close()
        self._text, self._tokens = "", []
