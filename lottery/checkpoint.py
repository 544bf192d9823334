"""Orbax save / restore of plain pytrees of arrays, and atomic JSON files.

Orbax writes a checkpoint to a temporary directory and renames it into place,
so a checkpoint directory either holds a whole checkpoint or does not exist.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_CKPTR = None


def _checkpointer() -> ocp.PyTreeCheckpointer:
  global _CKPTR
  if _CKPTR is None:
    _CKPTR = ocp.PyTreeCheckpointer()
  return _CKPTR


def save(path: str | os.PathLike, tree: Any) -> None:
  """Saves a pytree of arrays (nested dicts; no None leaves), replacing
  nothing: `path` must not exist yet."""
  _checkpointer().save(os.fspath(path), jax.device_get(tree))


def restore(path: str | os.PathLike) -> Any:
  """Restores a pytree saved by `save`, as numpy arrays."""
  ck = _checkpointer()
  meta = ck.metadata(os.fspath(path))
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ck.restore(os.fspath(path), restore_args=args)


def remove(path: str | os.PathLike) -> None:
  shutil.rmtree(path, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes JSON atomically (temporary file + rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)
