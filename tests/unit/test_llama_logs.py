"""Where llama.cpp's log lines go (``edgehub.llm.logs``): its callback fed by hand, as llama.cpp calls it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from edgehub.llm import logs


@pytest.fixture
def quiet() -> Iterator[None]:
    yield
    if logs._handler is not None:
        logs.log.removeHandler(logs._handler)
        logs._handler = None
    logs.log.setLevel(logging.CRITICAL + 1)


def _feed(*calls: tuple[int, bytes]) -> None:
    for level, text in calls:
        logs._on_line(level, text, None)


def test_nothing_is_printed_by_default_not_even_a_warning(
    quiet: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _feed((3, b"llama_kv_cache_iswa: using full-size SWA cache\n"), (2, b"llama_context: n_ctx = 2048\n"))
    _feed((4, b"llama_model_load: error\n"))
    assert capsys.readouterr().err == ""


def test_show_prints_lines_from_its_level_joining_fragments(
    quiet: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.show(logging.WARNING)
    _feed((2, b"llama_context: n_ctx = 2048\n"), (3, b"llama_kv_cache_iswa: "), (5, b"using full-size\n"))
    _feed((1, b"debug\n"), (4, b"load: bad\n"))
    assert capsys.readouterr().err == "llama_kv_cache_iswa: using full-size\nload: bad\n"


def test_first_error_is_the_first_line_after_the_mark(quiet: None) -> None:
    _feed((4, b"old failure\n"))
    mark = logs.errors_seen()
    assert logs.first_error(mark) == ""
    _feed((4, b"gguf_init_from_reader: failed to read key-value pairs\n"), (4, b"failed to load model\n"))
    assert logs.first_error(mark) == "gguf_init_from_reader: failed to read key-value pairs"
    _feed(*[(4, b"more\n")] * 20)  # the mark fell out of what is kept
    assert logs.first_error(mark) == ""
