"""``edgehub models ...``: models the hub stores and sends to devices, through its gRPC API
(``fleet/models.py``): add a GGUF file, list them, push one to devices (they fetch and verify it), tell
devices to run one, remove one. What each device holds and runs is in its twin (``edgehub devices``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from rich.markup import escape
from rich.table import Table

from edgehub.cli.common import JsonOpt, console, err, fail
from edgehub.protocol.v1 import hub_pb2, models_pb2
from edgehub.sync.models import CHUNK_SIZE, GGUF_MAGIC, is_gguf

from .api import DEFAULT_API, ApiOpt, as_json_line, call
from .areas import MODELS
from .policy import SELECTOR_HELP, parse_selector

H = hub_pb2
models_app = typer.Typer(help=MODELS.help, no_args_is_help=True)
UPLOAD_CHUNK = 4 * CHUNK_SIZE
"""Bytes per upload message (well under the API's message size)."""
ModelArg = Annotated[str, typer.Argument(help="The model: its sha256, or its name.")]


def _open(path: Path) -> BinaryIO:
    try:
        f = path.open("rb")
    except OSError as exc:
        fail(f"cannot read the model {path}: {exc.strerror}")
    if not is_gguf(f.read(len(GGUF_MAGIC))):
        f.close()
        fail(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC.decode()})")
    f.seek(0)
    return f


def _sha256(f: BinaryIO, size: int) -> str:
    h = hashlib.sha256()
    done = 0
    while block := f.read(UPLOAD_CHUNK * 4):
        h.update(block)
        done += len(block)
        err.print(f"\rhashing {done * 100 // max(size, 1):3d}%", end="")
    err.print()
    f.seek(0)
    return h.hexdigest()


def _chunks(f: BinaryIO, first: H.AddModelChunk, size: int) -> Iterator[H.AddModelChunk]:
    sent, msg = 0, first
    while data := f.read(UPLOAD_CHUNK):
        msg.data = data
        yield msg
        sent += len(data)
        err.print(f"\rsending {sent * 100 // max(size, 1):3d}% ({sent >> 20} of {size >> 20} MiB)", end="")
        msg = H.AddModelChunk()
    err.print()


@models_app.command("add")
def models_add(
    file: Annotated[Path, typer.Argument(help="The model file (GGUF).")],
    name: Annotated[str, typer.Option(help="Its name (default: the file name without .gguf).")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Send a GGUF file to the hub's model store. The hub hashes it itself and refuses it unless the
    hash is the one computed here. Needs operator."""
    with _open(file) as f:
        size = file.stat().st_size
        sha = _sha256(f, size)
        first = H.AddModelChunk(name=name or file.name.removesuffix(".gguf"), size=size, sha256=sha)
        info = call(api, lambda s: s.AddModel(_chunks(f, first, size), timeout=3600))
    if as_json:
        print(as_json_line(info))
        return
    console.print(f"model {escape(info.name)} stored: sha256 {info.sha256}, {info.size} bytes")


def _table(models: list[models_pb2.ModelInfo]) -> Table:
    table = Table("sha256", "name", "size", "added by")
    for m in models:
        table.add_row(m.sha256[:16], escape(m.name), f"{m.size / 2**20:.1f} MiB", escape(m.added_by))
    return table


@models_app.command("list")
def models_list(api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """The models in the hub's store."""
    reply = call(api, lambda s: s.ListModels(H.ListModelsRequest(), timeout=30))
    if as_json:
        for m in reply.models:
            print(as_json_line(m))
        return
    console.print(_table(list(reply.models)))


def _sent(reply: H.ModelSent, what: str, as_json: bool) -> None:
    if as_json:
        print(as_json_line(reply))
        return
    m = reply.model
    console.print(
        f"{what} {escape(m.name)} ({m.sha256[:12]}) sent to {len(reply.devices)} devices: "
        f"{', '.join(reply.devices)}"
    )


@models_app.command("push")
def models_push(
    model: ModelArg,
    devices: Annotated[str, typer.Option("--devices", help=SELECTOR_HELP)],
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Send the model to devices: each fetches it (resuming a cut download), verifies its sha256 and
    keeps it; their twins show the progress (`edgehub devices get ID`). Needs operator."""
    req = H.PushModelRequest(model=model, target=parse_selector(devices))
    _sent(call(api, lambda s: s.PushModel(req, timeout=30)), "fetch of", as_json)


@models_app.command("use")
def models_use(
    model: ModelArg,
    devices: Annotated[str, typer.Option("--devices", help=SELECTOR_HELP)],
    reason: Annotated[str, typer.Option(help="Why (recorded in each running agent's mind-log).")] = "",
    api: ApiOpt = DEFAULT_API,
    as_json: JsonOpt = False,
) -> None:
    """Tell devices to run the model from now on. A device refuses (dead-letters the command, with the
    reason) unless it holds the model and its sha256 checks out. Needs operator."""
    req = H.UseModelRequest(model=model, target=parse_selector(devices), reason=reason)
    _sent(call(api, lambda s: s.UseModel(req, timeout=30)), "use of", as_json)


@models_app.command("remove")
def models_remove(model: ModelArg, api: ApiOpt = DEFAULT_API, as_json: JsonOpt = False) -> None:
    """Delete a model from the hub's store (devices keep their copies). Needs operator."""
    info = call(api, lambda s: s.RemoveModel(H.RemoveModelRequest(model=model), timeout=60))
    if as_json:
        print(as_json_line(info))
        return
    console.print(f"model {escape(info.name)} ({info.sha256[:12]}) removed")
