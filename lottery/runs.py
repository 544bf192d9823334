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


def run_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """`workdir` as the directory of a run (one that holds its config.json).

  Raises:
    TypeError: naming `workdir` if it is not a path (a programming error).
    LotteryError: ('workdir: ...', one line) if it is not a directory or
      holds no run (a folder of runs would mix their records).
  """
  if not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f"workdir: must be a path, str or os.PathLike (got "
                    f"{type(workdir).__name__} {workdir!r})")
  path = pathlib.Path(workdir)
  if not path.is_dir():
    what = "is not a directory" if path.exists() else "does not exist"
    raise LotteryError(f"workdir: {os.fspath(workdir)!r} {what}")
  if not (path / workdir_lib.CONFIG_FILE).is_file():
    raise LotteryError(f"workdir: {os.fspath(workdir)!r} holds no run "
                       f"({workdir_lib.CONFIG_FILE} missing)")
  return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The resolved config a run saved in `workdir` (its config.json).

  The result runs again as is: `lottery.run(load_config(wd), wd)` resumes or
  re-opens the same run.

  Raises:
    LotteryError: ('workdir: ...') if `workdir` holds no run (`run_dir`), or
      its config.json cannot be read.
  """
  path = run_dir(workdir) / workdir_lib.CONFIG_FILE
  try:
    data = checkpoint.read_json(path, unverified_ok=True)
  except (OSError, ValueError) as e:
    raise LotteryError(f"workdir: cannot read {os.fspath(path)!r} ({e})"
                       ) from None
  if isinstance(data, dict):
    # A field that a later rule refuses where nothing reads it (a run
    # written before the rule) at its default, as the run's check reads it.
    data = workdir_lib.with_new_defaults(data)
  return ml_collections.ConfigDict(_tuples(data))
