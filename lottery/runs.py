"""Reading back what a finished or running experiment saved in its workdir."""

from __future__ import annotations

import os
import pathlib

import ml_collections

from lottery import checkpoint
from lottery import workdir as workdir_lib
from lottery.errors import LotteryError


def _tuples(value):
  """JSON data with its lists back as tuples, as configs hold sequences."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir` (its config.json).

  The result runs again as is: `lottery.run(load_config(wd), wd)` resumes or
  re-opens the same run.

  Raises:
    LotteryError: ('workdir: ...') if `workdir` holds no run, or its
      config.json cannot be read.
  """
  path = pathlib.Path(workdir) / workdir_lib.CONFIG_FILE
  if not path.exists():
    raise LotteryError(f"workdir: {os.fspath(workdir)!r} holds no run "
                       f"({workdir_lib.CONFIG_FILE} missing)")
  try:
    data = checkpoint.read_json(path, unverified_ok=True)
  except (OSError, ValueError) as e:
    raise LotteryError(f"workdir: cannot read {os.fspath(path)!r} ({e})"
                       ) from None
  return ml_collections.ConfigDict(_tuples(data))
