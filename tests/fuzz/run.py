"""Run one fuzz target under atheris (libFuzzer, coverage-guided over edgehub's Python code):

    uv run --no-sync python -m tests.fuzz.run TARGET [libFuzzer flags] [CORPUS_DIR | INPUT_FILE ...]

``TARGET`` is a module of ``tests/fuzz/targets``. Every ``edgehub`` module the target imports is
instrumented for coverage; libFuzzer's flags pass through (``-runs=N``, ``-max_total_time=S``,
``-seed=N``, ``-print_final_stats=1``, ``-artifact_prefix=DIR/``). With files instead of a corpus
folder, it runs just those inputs (a crash's reproduction). A crash (any exception the target lets
out, including a failed property) prints its traceback, writes the input to ``crash-<sha1>`` and
exits non-zero.
"""

from __future__ import annotations

import importlib
import logging
import sys

import atheris


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    name, flags = argv[1], argv[2:]
    logging.disable(logging.CRITICAL)  # the code under test logs every rejection: millions of lines
    with atheris.instrument_imports(include=["edgehub"]):
        target = importlib.import_module(f"tests.fuzz.targets.{name}")
    atheris.Setup([argv[0], *flags], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
