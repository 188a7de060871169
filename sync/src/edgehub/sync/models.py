"""Models distributed by the hub (issue 21 part 2), what both sides share: where the files are kept
(the JetStream object store ``MODELS``, object name = the file's SHA-256), the ``ModelInfo`` records
(KV bucket ``streams.MODEL_INFOS``, key = the SHA-256) and their one serialisation, and the check that a
file is a GGUF at all.

The object store's chunks are messages of the stream ``OBJ_<bucket>`` on ``$O.<bucket>.C.<nuid>``, the
object's metadata (size, chunk count, nuid, SHA-256 digest) the last message on
``$O.<bucket>.M.<base64 name>``. nats-py's ``ObjectStore.get`` reads an object from its first chunk and
checks the digest only at the end; a device resumes a cut download from the chunks it has instead
(``edgehub.edge.models.fetch``), reading the stream from a sequence, and checks the whole file's
SHA-256 itself.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from edgehub.protocol.v1 import models_pb2

from .records import ProtoCodec
from .streams import MODELS

MODELS_STREAM = f"OBJ_{MODELS}"
MODEL_RECORD_VERSION = 1
"""``ModelInfo.schema_version`` the hub writes."""
MODEL_INFOS_CODEC = ProtoCodec(models_pb2.ModelInfo, MODEL_RECORD_VERSION)
CHUNK_SIZE = 256 * 1024
"""Bytes per object-store chunk (a message of the stream): the unit a cut download resumes at."""
GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""
HASH_BLOCK = 1024 * 1024


def chunk_subject(nuid: str) -> str:
    """The subject an object's chunks are on."""
    return f"$O.{MODELS}.C.{nuid}"


def digest_of(sha256: str) -> str:
    """The object store's record of a file's digest (``SHA-256=<base64url>``) for the hex ``sha256``."""
    return "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256)).decode()


def is_gguf(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first bytes, at least 4) is a GGUF."""
    return head[:4] == GGUF_MAGIC


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in blocks (blocking: call it off the event loop)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
