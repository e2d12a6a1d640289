"""Training checkpoints that survive a kill at any moment, for examples/train.py.

* :func:`save` -- write a payload atomically (a temporary file in the same folder, flushed and
  fsynced, then ``os.replace``), keeping the previous checkpoint beside it as ``<name>.prev.pt``.
* :func:`read` -- the payload of one file, checked against the SHA-256 stored in it.
* :func:`latest` -- the payload of the newest usable checkpoint of a name: the last one, else (with
  a one-line warning) the previous one when the last is torn or corrupt.
* :func:`rng_state` / :func:`set_rng_state` -- Python's, NumPy's and torch's random states (CPU, CUDA
  and any extra generators) as tensors, numbers and strings.

A checkpoint file is ``torch.save({"format": 1, "sha256": hex digest, "payload": uint8 tensor})``
where the payload tensor holds the bytes of ``torch.save(payload)``. Both levels hold only tensors,
dicts, lists, numbers and strings, so ``torch.load(path, weights_only=True)`` reads the file and
``torch.load(io.BytesIO(record["payload"].numpy().tobytes()), weights_only=True)`` the payload: no
pickled code runs, and the digest is checked before the payload is unpickled at all.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: torn, corrupt, or not a checkpoint at all."""


def previous(path):
    """Where the checkpoint before ``path`` is kept: ``gan.pt`` -> ``gan.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path, payload):
    """Write ``payload`` (tensors, dicts, lists, numbers, strings) as the checkpoint ``path``.

    The record goes to a temporary file in the same folder, is flushed and fsynced, then the
    current ``path`` (if any) becomes :func:`previous` and the temporary file becomes ``path``,
    each by ``os.replace``; the folder is fsynced last. A kill at any moment leaves the last
    complete checkpoint readable as ``path`` or, between the two renames, as ``previous(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getbuffer()
    record = {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(),
              "payload": torch.frombuffer(bytearray(body), dtype=torch.uint8)}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, previous(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the renames themselves survive a power cut only once the folder is synced
    finally:
        os.close(folder)


def read(path):
    """The payload of the checkpoint file ``path``, loaded on the CPU.

    Raises:
        CheckpointError: if the file is torn or is not a checkpoint, or its payload does not
            match the SHA-256 stored with it.
    """
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- a torn zip, a truncated pickle, a foreign file: all unusable
        raise CheckpointError(f"unreadable ({type(error).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("payload"), torch.Tensor):
        raise CheckpointError("not a checkpoint of this format")
    body = record["payload"].numpy().tobytes()
    if hashlib.sha256(body).hexdigest() != record.get("sha256"):
        raise CheckpointError("checksum mismatch")
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


def latest(path, warn):
    """The payload of the newest usable checkpoint of ``path``: ``path`` itself, else
    :func:`previous`; None when neither file exists. ``warn(line)`` is called once, with one
    line, when ``path`` exists but is unusable and the previous checkpoint is used instead.

    Raises:
        CheckpointError: if checkpoint files exist but none of them is usable.
    """
    path = Path(path)
    older = previous(path)
    problem = None
    if path.exists():
        try:
            return read(path)
        except CheckpointError as error:
            problem = f"checkpoint {path} is {error}"
    if older.exists():
        try:
            payload = read(older)
        except CheckpointError as error:
            raise CheckpointError(f"{problem + ', and ' if problem else ''}checkpoint {older} is {error}") from None
        if problem:
            warn(f"{problem}; resuming from the previous one, {older}")
        return payload
    if problem:
        raise CheckpointError(f"{problem}, and there is no previous one")
    return None


def rng_state(generators, cuda):
    """Every random state a training run draws from: Python's ``random``, NumPy's global state,
    torch's CPU state, with ``cuda`` the state of every CUDA device, and ``generators`` (a dict of
    name -> ``torch.Generator``). Only tensors, lists, numbers and strings, for ``weights_only``."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        "generators": {key: generator.get_state() for key, generator in generators.items()},
    }


def set_rng_state(state, generators):
    """Restore what :func:`rng_state` returned; ``generators`` are set in place by name."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, generator in generators.items():
        generator.set_state(state["generators"][key])
