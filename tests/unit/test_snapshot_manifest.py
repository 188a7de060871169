"""Snapshot manifests: an image is restored only on the kernel, CPU, CRIU, runtime and model it fits."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgehub.edge.worker.manifest import FORMAT, Manifest, cpu_flags, machine

BASE = Manifest(
    format=FORMAT,
    kernel="6.1.0",
    cpu_flags=("avx2", "fma", "sse4_2"),
    criu_version="4.1.1",
    runtime="3.11.7 libllama.so:1:2",
    model="abc123",
    settings={"n_ctx": 2048, "n_batch": 64},
    pid=4242,
    socket="/tmp/w.sock",
    cached_tokens=12,
    files={"pages-1.img": 4096},
)


def test_an_identical_machine_restores() -> None:
    assert BASE.refusal(dataclasses.replace(BASE, pid=0, socket="", cached_tokens=0)) is None


def test_a_cpu_with_more_features_restores_and_one_with_fewer_is_refused() -> None:
    assert BASE.refusal(dataclasses.replace(BASE, cpu_flags=(*BASE.cpu_flags, "avx512f"))) is None
    reason = BASE.refusal(dataclasses.replace(BASE, cpu_flags=("sse4_2",)))
    assert reason is not None
    assert "avx2" in reason
    assert "fma" in reason


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"format": FORMAT + 1}, "format"),
        ({"kernel": "6.2.0"}, "kernel changed"),
        ({"criu_version": "4.2"}, "CRIU changed"),
        ({"runtime": "3.11.8 libllama.so:1:3"}, "llama.cpp changed"),
        ({"model": "def456"}, "model changed"),
        ({"settings": {"n_ctx": 1024, "n_batch": 64}}, "settings changed"),
    ],
)
def test_each_difference_is_refused_with_its_reason(change: dict[str, object], words: str) -> None:
    reason = BASE.refusal(dataclasses.replace(BASE, **change))  # type: ignore[arg-type]
    assert reason is not None
    assert words in reason


def test_manifest_round_trips_through_json() -> None:
    assert Manifest.from_json(BASE.to_json()) == BASE


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        json.dumps({**json.loads(BASE.to_json()), "surprise": 1}),
        json.dumps({**json.loads(BASE.to_json()), "pid": "4242"}),
        "{not json",
    ],
)
def test_a_malformed_manifest_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"manifest|Expecting"):
        Manifest.from_json(text)


def test_this_machine_describes_itself() -> None:
    here = machine(criu_version="4.1.1", model="abc", settings={})
    assert here.kernel
    assert here.cpu_flags == cpu_flags()
    assert here.refusal(here) is None
