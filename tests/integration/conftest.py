"""Fixtures for tests on the real model, real SQLite and real daemons (subprocesses)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgehub.llm import LlamaSettings
from edgehub.llm.llama import LlamaBrain
from tests.harness.neo4j import graph_fixture, neo4j_server_fixture  # noqa: F401 - one Neo4j per session


@pytest.fixture(scope="session")
def llama_settings() -> LlamaSettings:
    return LlamaSettings(n_ctx=2048, n_threads=2, n_batch=64)


@pytest.fixture(scope="session")
def brain(llama_settings: LlamaSettings) -> Iterator[LlamaBrain]:
    b = LlamaBrain.open(llama_settings)
    yield b
    b.close()
