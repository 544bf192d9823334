"""A run's workdir: claim it for a config, or refuse one that holds another.

Everything a run writes lives under its workdir. The resolved config is saved
there as config.json when the run starts; the same command on the same workdir
continues the run, and a different config is refused before anything is
written, so nothing in the workdir is ever overwritten by another run.
"""

from __future__ import annotations

import json
import os
import pathlib

import ml_collections

from lottery import checkpoint
from lottery.errors import LotteryError

CONFIG_FILE = "config.json"


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON data (tuples become lists)."""
  return json.loads(config.to_json())


def check(workdir: str | os.PathLike, config: ml_collections.ConfigDict
          ) -> bool:
  """Checks, writing nothing, that `config` may run in `workdir`.

  Returns:
    Whether the workdir already holds this config's run.

  Raises:
    LotteryError: ('config: ...') naming the fields that differ, if the
      workdir holds a run of another config; ('workdir: ...') if it is a
      non-empty directory that holds no run, or is a file.
  """
  wd = pathlib.Path(workdir)
  if wd.exists() and not wd.is_dir():
    raise LotteryError(f"workdir: {os.fspath(wd)!r} is a file")
  new = config_json(config)
  saved_path = wd / CONFIG_FILE
  if saved_path.exists():
    try:
      saved = checkpoint.read_json(saved_path)
    except (OSError, ValueError) as e:
      raise LotteryError(f"config: cannot read {os.fspath(saved_path)!r} "
                         f"({e})") from None
    if saved != new:
      a, b = _flatten(saved), _flatten(new)
      diffs = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      raise LotteryError(
          f"config: workdir {os.fspath(wd)!r} holds a run with a different "
          f"config ({'; '.join(diffs)}); use a new --workdir")
    return True
  if wd.exists() and any(wd.iterdir()):
    raise LotteryError(f"workdir: {os.fspath(wd)!r} is not empty and holds no "
                       f"lottery run ({CONFIG_FILE} missing); use a new "
                       f"--workdir")
  return False


def claim(workdir: str | os.PathLike, config: ml_collections.ConfigDict
          ) -> pathlib.Path:
  """Creates the workdir for `config`, or checks it holds this config's run.

  Raises:
    LotteryError: as `check`.
  """
  if not check(workdir, config):
    checkpoint.write_json(pathlib.Path(workdir) / CONFIG_FILE,
                          config_json(config))
  return pathlib.Path(workdir)
