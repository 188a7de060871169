"""Where llama.cpp's own log lines go: nowhere by default, standard error when asked (``--verbose``).

llama.cpp reports through one process-wide callback. llama-cpp-python 0.3.36 installs its own when
imported, and that one maps levels by an older ggml enum (NONE, INFO, WARN, ERROR, DEBUG) while the
library now numbers them NONE, DEBUG, INFO, WARN, ERROR: every warning passes as an error, so lines
such as ``llama_kv_cache_iswa: using full-size SWA cache`` were printed on every model load whatever
``verbose`` said. ``install()`` replaces that callback with ``_on_line``, which maps levels by the current
enum and hands whole lines to the ``llama.cpp`` logger: silent unless ``show()`` lowered its threshold.
Error lines are also kept (``first_error``) so a failed load can say what llama.cpp said, in one line.

Importing this module does not load llama.cpp (the CLI's ``--verbose`` sets the level before any model
is opened); ``install()`` does, and the modules that construct a ``Llama`` call it first.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections import deque
from typing import Any

log = logging.getLogger("llama.cpp")
log.propagate = False  # the daemons' log format is for their own records; these lines go as written
log.setLevel(logging.CRITICAL + 1)

LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
"""ggml_log_level (ggml.h): 0 NONE, 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT (continues the last line)."""
CONT = 5

_callback: Any = None  # the ctypes function object: llama.cpp holds only its address, so keep it alive
_level = logging.DEBUG
_partial = ""
_errors: deque[str] = deque(maxlen=8)
_seen = 0
_handler: logging.Handler | None = None


class _Raw(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def show(level: int = logging.DEBUG) -> None:
    """Print llama.cpp's lines of ``level`` and above on standard error, as llama.cpp writes them."""
    global _handler
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(_Raw())
        log.addHandler(_handler)
    log.setLevel(level)


def shown() -> bool:
    """Whether llama.cpp's informational lines are printed (then llama-cpp-python's own may be too)."""
    return log.isEnabledFor(logging.INFO)


def errors_seen() -> int:
    """How many error lines llama.cpp has logged so far (a mark for ``first_error``)."""
    return _seen


def first_error(since: int) -> str:
    """llama.cpp's first error line after the mark ``since`` ("" when none was kept): the specific one,
    before the lines that only say the load failed."""
    kept = _seen - len(_errors)
    return _errors[since - kept] if kept <= since < _seen else ""


def install() -> None:
    """Route llama.cpp's log through ``_on_line`` (idempotent; loads llama.cpp)."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    _callback = llama_cpp.llama_log_callback(_on_line)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _on_line(level: int, text: bytes, _user_data: Any) -> None:
    """llama.cpp's callback: fragments are joined into lines; each line is logged at its level."""
    global _level, _partial, _seen
    if level != CONT:
        _level = LEVELS.get(level, logging.DEBUG)
    if _level < logging.ERROR and not log.isEnabledFor(_level):
        return  # the common case: thousands of debug lines per model load, dropped at once
    _partial += text.decode(errors="replace")
    *lines, _partial = _partial.split("\n")
    for line in lines:
        if _level >= logging.ERROR:
            _errors.append(line.strip())
            _seen += 1
        log.log(_level, "%s", line)
