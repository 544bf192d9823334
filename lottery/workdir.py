"""A run's workdir: claim it for a config, or refuse one that holds another.

Everything a run writes lives under its workdir. The resolved config is saved
there as config.json when the run starts; the same command on the same workdir
continues the run, and a different config is refused before anything is
written, so nothing in the workdir is ever overwritten by another run. Two
exceptions: a config that differs only in a higher `pruning.rounds`
extends the run (config.json is rewritten with the new value), and a run
that saved no result yet (`saved_anything`: its loss diverged at once, or
it was killed in its first seconds) gives way to another config, whose
config.json and facts.json replace its own.

One run at a time writes a workdir: `claim` holds an OS lock (flock) on
<workdir>/lock, which holds the writer's pid, until `Claim.release()` or the
process's end (the kernel drops the lock of a dead process, so a killed run
never blocks the next one). Facts about the run's inputs that the caller
passes as `extra` (e.g. a data fingerprint) are kept in facts.json and
compared like the config.

A run killed at any moment leaves temporary files (write_json's '*.tmp',
orbax's '*.orbax-checkpoint-tmp*'); they do not make a workdir look foreign
and are deleted when it is claimed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import ml_collections

from lottery import checkpoint
from lottery import parallel
from lottery.errors import LotteryError

CONFIG_FILE = "config.json"
FACTS_FILE = "facts.json"
LOCK_FILE = "lock"
# A run whose config differs from the saved one only in this may extend it.
_EXTENDABLE = "pruning.rounds"


def flatten(d: dict, prefix: str = "") -> dict:
  """Nested dicts as one {'block.field': value} dict."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def changes(a: dict, b: dict) -> str:
  """'field: old -> new; ...' of the fields where two flat configs differ."""
  return "; ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
                   for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def options_unset(flat: dict) -> dict:
  """A flat config with each model option that equals its model's own
  default written as unset (0 or '', as `base_config` has it): the same
  network either way (`model.width=25` of the MNIST-1D CNN is 0)."""
  from lottery import models  # pylint: disable=g-import-not-at-top
  out = dict(flat)
  for option, default in models.defaults_of(flat.get("model.name")).items():
    key = f"model.{option}"
    if key in out and out[key] == default and type(out[key]) is type(default):
      out[key] = "" if isinstance(default, str) else 0
  return out


def config_changes(a: dict, b: dict) -> str:
  """`changes` of two flat configs in the fields where they are other runs
  (`options_unset`), with their own values; '' for the same run's."""
  unset_a, unset_b = options_unset(a), options_unset(b)
  keys = {k for k in set(a) | set(b) if unset_a.get(k) != unset_b.get(k)}
  return changes({k: a[k] for k in keys if k in a},
                 {k: b[k] for k in keys if k in b})


def with_new_defaults(saved: dict, new: dict | None = None) -> dict:
  """`saved` as today's schema reads it: with the fields added to the schema
  since it was written (absent from it, at their default in `new`; none
  without `new`), and with each field that nothing reads under its other
  values at its default (`config.READ_WHEN`; a value a later rule refuses).
  Such a run is the same run."""
  new = saved if new is None else new
  from lottery import config as config_lib  # pylint: disable=g-import-not-at-top
  defaults = flatten(config_json(config_lib.base_config()))
  flat_saved, flat_new = flatten(saved), flatten(new)
  added = {k: v for k, v in flat_new.items()
           if k not in flat_saved and k in defaults and defaults[k] == v}
  flat = config_lib.unread_at_defaults({**flat_saved, **added}, defaults)
  return unflatten(flat) if flat != flat_saved else saved


def _other_method(wd: pathlib.Path, saved: str, new: str) -> LotteryError:
  return LotteryError(
      f"method: workdir {_q(wd)} holds a run of method {saved!r}, not {new!r}; "
      f"a workdir belongs to one method: use a new --workdir")


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON data (tuples become lists)."""
  return json.loads(config.to_json())


def _q(p: os.PathLike) -> str:
  return repr(os.fspath(p))


def holds_run(path: pathlib.Path) -> bool:
  """Whether `path` is a run's workdir: its config.json beside the lock or
  facts that a run writes with it (not any folder with a config.json)."""
  return (path / CONFIG_FILE).is_file() and any(
      (path / f).exists() for f in (LOCK_FILE, FACTS_FILE))


def _check_path(wd: pathlib.Path) -> None:
  """Refuses a workdir that cannot be written, or a new run's inside another
  run's (its path resolved: '..' and links followed), before anything is
  written. A run already there resumes."""
  if not holds_run(wd):
    # realpath, not resolve(): a link loop is refused below, in one line.
    for parent in pathlib.Path(os.path.realpath(wd)).parents:
      if holds_run(parent):
        raise LotteryError(f"workdir: {_q(wd)} is inside the run in "
                           f"{_q(parent)}, whose records it would mix with "
                           f"its own; use a --workdir outside it")
  if wd.is_symlink() and not wd.exists():
    raise LotteryError(f"workdir: {_q(wd)} is a dangling symlink (to "
                       f"{os.readlink(wd)!r})")
  if wd.exists():
    if not wd.is_dir():
      raise LotteryError(f"workdir: {_q(wd)} is a file")
    if not os.access(wd, os.W_OK | os.X_OK):
      raise LotteryError(f"workdir: {_q(wd)} is not writable")
    return
  parent = wd.absolute().parent
  while not parent.exists():
    if parent.is_symlink():
      raise LotteryError(f"workdir: {_q(wd)} cannot be created: {_q(parent)} "
                         f"is a dangling symlink")
    parent = parent.parent
  if not parent.is_dir():
    raise LotteryError(f"workdir: {_q(wd)} cannot be created: {_q(parent)} "
                       f"is a file")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise LotteryError(f"workdir: {_q(wd)} cannot be created: {_q(parent)} "
                       f"is not writable")
  # os.access says yes to root wherever the mode bits do (in /proc, on some
  # mounts); a folder made and removed at once asks the kernel itself (in the
  # process that creates the workdir).
  if not checkpoint.is_writer():
    return
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".lottery-probe-", dir=parent))
  except OSError as e:
    raise LotteryError(f"workdir: {_q(wd)} cannot be created in {_q(parent)} "
                       f"({e.strerror}); use a --workdir in a writable "
                       f"directory") from None


def _in_use(wd: pathlib.Path, fd: int) -> LotteryError:
  try:
    pid = os.pread(fd, 32, 0).decode().strip() or "unknown"
  except (OSError, UnicodeDecodeError):
    pid = "unknown"
  return LotteryError(f"workdir: {_q(wd)} is in use by another run (pid "
                      f"{pid})")


def _check_not_in_use(wd: pathlib.Path) -> None:
  """Raises if a live run holds the workdir's lock; writes nothing."""
  try:
    fd = os.open(wd / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return  # No lock file: no run yet; an unreadable one: `claim` decides.
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _in_use(wd, fd) from None
  finally:
    os.close(fd)  # Also drops the shared lock.


def _is_own_lock(p: pathlib.Path) -> bool:
  """Whether `p` is a lock file a run wrote: empty, or a pid (a user's file
  named 'lock' is not)."""
  if p.name != LOCK_FILE or p.is_symlink() or not p.is_file():
    return False
  try:
    with open(p, "rb") as f:
      text = f.read(32)
  except OSError:
    return False
  return text.strip().isdigit() or not text.strip()


def _is_leftover(p: pathlib.Path) -> bool:
  """Whether `p` is a temporary file or directory of a killed writer."""
  return checkpoint.is_leftover(p.name)


def legacy_method(wd: pathlib.Path, default: str) -> str:
  """The method of a workdir whose config.json predates `config.method`:
  IMP writes rounds/, pruning at init pai/, sparse training runs/."""
  for name, directory in (("imp", "rounds"), ("pai", "pai"),
                          ("sparse", "runs")):
    if (wd / directory).is_dir():
      return name
  return default


def _check_object(saved: Any, path: pathlib.Path) -> None:
  """Refuses a config.json or facts.json that holds no JSON object."""
  if not isinstance(saved, dict):
    raise LotteryError(
        f"config: {_q(path)} holds {json.dumps(saved)[:40]}, not a JSON "
        f"object; it is not a lottery run's file: restore it, or use a new "
        f"--workdir")


def _read_facts(path: pathlib.Path) -> dict:
  try:
    facts = checkpoint.read_json(
        path, unverified_ok=checkpoint.predates_checksums(path.parent))
  except OSError as e:
    raise LotteryError(f"config: cannot read {_q(path)} ({e})") from None
  _check_object(facts, path)
  return facts


def _check_lock(wd: pathlib.Path) -> None:
  """Refuses a <wd>/lock that cannot be opened for writing and locked."""
  path = wd / LOCK_FILE
  if path.is_symlink():  # Never written through: its target is not ours.
    raise LotteryError(f"workdir: the lock file {_q(path)} is a symlink (to "
                       f"{os.readlink(path)!r}); remove it and rerun")
  if path.is_dir():
    raise LotteryError(f"workdir: the lock file {_q(path)} is a directory; "
                       f"remove it and rerun")
  if path.exists() and not os.access(path, os.R_OK | os.W_OK):
    raise LotteryError(f"workdir: the lock file {_q(path)} is not readable "
                       f"and writable; fix its permissions (or remove it) and "
                       f"rerun")


def _check_run(wd: pathlib.Path, config: ml_collections.ConfigDict,
               extra: dict[str, Any] | None) -> bool:
  """Whether `wd` holds this config's run; raises if it holds another."""
  if not wd.exists():
    return False
  new = config_json(config)
  saved_path = wd / CONFIG_FILE
  if not saved_path.exists():
    if any(not (_is_own_lock(p) or _is_leftover(p)) for p in wd.iterdir()):
      raise LotteryError(f"workdir: {_q(wd)} is not empty and holds no "
                         f"lottery run ({CONFIG_FILE} missing); use a new "
                         f"--workdir")
    return False
  try:
    # config.json without a checksum: a workdir written before they were.
    saved = checkpoint.read_json(saved_path, unverified_ok=True)
  except OSError as e:
    raise LotteryError(f"config: cannot read {_q(saved_path)} ({e})") from None
  _check_object(saved, saved_path)
  try:
    _compare(wd, saved, new, extra)
  except LotteryError:
    if saved_anything(wd):
      raise
    # Another config's run that saved nothing (its loss diverged at once,
    # or it was killed before its first checkpoint): this one replaces it
    # (`claim` rewrites config.json and facts.json).
    return False
  return True


def _compare(wd: pathlib.Path, saved: dict, new: dict,
             extra: dict[str, Any] | None) -> None:
  """Raises unless the run of `saved` (and facts.json) is `new`'s."""
  if "method" not in saved and "method" in new:
    # A run written before configs named their method (its layout says
    # which it is) held every method's fields: compare those this one has.
    saved = {**saved, "method": legacy_method(wd, new["method"])}
    flat_new = flatten(new)
    saved = unflatten({k: v for k, v in flatten(saved).items()
                        if k in flat_new})
  # A model option at its default counts as unset on both sides first, so
  # that a field the saved config predates is added at the new one's value.
  saved = with_new_defaults(saved, unflatten(options_unset(flatten(new))))
  raw_a, raw_b = flatten(saved), flatten(new)
  a, b = options_unset(raw_a), options_unset(raw_b)
  keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  if keys:
    if keys == [_EXTENDABLE] and all(isinstance(d.get(_EXTENDABLE), int)
                                     for d in (a, b)):
      if b[_EXTENDABLE] < a[_EXTENDABLE]:
        raise LotteryError(
            f"{_EXTENDABLE}: lower than the {a[_EXTENDABLE]} rounds of the "
            f"run in workdir {_q(wd)} (got {b[_EXTENDABLE]}); a higher value "
            f"extends that run, a lower one needs a new --workdir")
    elif "method" in keys and "method" in a and "method" in b:
      raise _other_method(wd, a["method"], b["method"])
    else:
      raise LotteryError(
          f"config: workdir {_q(wd)} holds a run with a different config "
          f"({config_changes(raw_a, raw_b)}); use a new --workdir, or the "
          f"run's own values to resume it (lottery.load_config(workdir))")
  if extra and (wd / FACTS_FILE).exists():
    facts = _read_facts(wd / FACTS_FILE)
    new_facts = json.loads(json.dumps(extra))
    if "method" in facts and facts["method"] != new_facts.get("method"):
      raise _other_method(wd, facts["method"], new_facts.get("method"))
    diffs = [f"{k}: {facts[k]!r} -> {v!r}" for k, v in sorted(new_facts.items())
             if k in facts and facts[k] != v]
    if diffs:
      raise LotteryError(
          f"config: workdir {_q(wd)} holds a run on different data "
          f"({'; '.join(diffs)}); use a new --workdir")


def saved_anything(workdir: str | os.PathLike) -> bool:
  """Whether the run in `workdir` has saved a result: a summary, a mid-run
  checkpoint or a finished ticket."""
  from lottery import tickets  # pylint: disable=g-import-not-at-top
  wd = pathlib.Path(workdir)
  return ((wd / tickets.SUMMARY).exists() or (wd / "progress").exists() or
          next(wd.rglob(tickets.METRICS), None) is not None)



def check(workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
          extra: dict[str, Any] | None = None) -> bool:
  """Checks, writing nothing, that `config` may run in `workdir` (where it
  is to be created, a folder made and removed at once asks the kernel).

  Args:
    workdir: the run's directory (it need not exist).
    config: the run's resolved config.
    extra: optional facts about the run's inputs (JSON data, e.g.
      {'data_fingerprint': 'sha256:...'}), compared key by key with those
      recorded by an earlier `claim`.

  Returns:
    Whether the workdir already holds this config's run (or one that this
    config extends by raising `pruning.rounds`).

  Raises:
    LotteryError: ('workdir: ...') if another process runs in the workdir,
      if it is a file, a dangling symlink, not writable (or cannot be
      created), or a non-empty directory that holds no run; ('config: ...')
      naming the fields or facts that differ, if it holds a run of another
      config; ('pruning.rounds: ...') if the config lowers the rounds of
      the run it holds.
  """
  holds = _check(pathlib.Path(workdir), config, extra)
  # Several processes: none claims the workdir before all have checked it.
  parallel.barrier("workdir checked")
  return holds


def _check(wd: pathlib.Path, config: ml_collections.ConfigDict,
           extra: dict[str, Any] | None) -> bool:
  _check_path(wd)
  if wd.exists() and checkpoint.is_writer():
    _check_lock(wd)
    _check_not_in_use(wd)  # The lock is process 0's (multi-host runs).
  return _check_run(wd, config, extra)


class Claim:
  """A workdir held by this process: its lock is held until `release()`.

  Use as a context manager, or call `release()` when the run ends; the
  lock also ends with the process. `os.fspath(claim)` is the workdir.

  Attributes:
    path: the workdir.
  """

  def __init__(self, path: pathlib.Path, fd: int):
    self.path = path
    self._fd = fd

  def release(self) -> None:
    """Drops the lock (and the pid in the lock file); idempotent."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        os.ftruncate(fd, 0)
      except OSError:
        pass
      os.close(fd)

  def __fspath__(self) -> str:
    return os.fspath(self.path)

  def __enter__(self) -> Claim:
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def __del__(self):
    # A claim dropped without release(): close (which unlocks), quietly,
    # even at interpreter exit.
    if getattr(self, "_fd", None) is not None:
      try:
        os.close(self._fd)
      except Exception:  # pylint: disable=broad-except
        pass

  def __repr__(self) -> str:
    held = "held" if self._fd is not None else "released"
    return f"Claim({os.fspath(self.path)!r}, {held})"


def _lock(wd: pathlib.Path) -> int:
  """Opens and locks <wd>/lock, writing this pid into it; returns its fd."""
  path = wd / LOCK_FILE
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o666)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise  # `disk_errors` reports it.
    _check_lock(wd)  # Names the usual causes.
    raise LotteryError(f"workdir: cannot open the lock file {_q(path)} "
                       f"({e.strerror}); remove it or fix its permissions, "
                       f"and rerun") from None
  # `check` in another process may hold a shared lock for an instant.
  for attempt in range(10):
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      break
    except BlockingIOError:
      if attempt == 9:
        err = _in_use(wd, fd)
        os.close(fd)
        raise err from None
      time.sleep(0.01)
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  except BaseException:
    os.close(fd)
    raise
  return fd


def _clean(wd: pathlib.Path) -> None:
  """Deletes the temporary files and directories of killed writers."""
  for root, dirs, files in os.walk(wd):
    # Orbax's, and a directory `checkpoint.remove` renamed and was killed
    # while deleting.
    for d in [d for d in dirs if _is_leftover(pathlib.Path(d))]:
      shutil.rmtree(os.path.join(root, d), ignore_errors=True)
      dirs.remove(d)
    for f in files:
      if _is_leftover(pathlib.Path(f)):
        os.unlink(os.path.join(root, f))


def claim(workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
          extra: dict[str, Any] | None = None) -> Claim:
  """Claims the workdir for `config`: locks it, cleans it, records the run.

  Creates the workdir (and config.json, facts.json) for a new run, or checks
  that it holds this config's run (as `check`, again under the lock). Leftover
  temporary files of a killed run are deleted.

  Args:
    workdir: the run's directory.
    config: the run's resolved config.
    extra: optional facts about the run's inputs (see `check`); recorded in
      facts.json, keys that it lacks are added.

  Returns:
    A `Claim` holding the workdir's lock; release it when the run ends.

  Raises:
    LotteryError: as `check`; ('workdir: no space left on device ...') if
      the disk is full.
  """
  wd = pathlib.Path(workdir)
  if not checkpoint.is_writer():
    # A multi-host run's other processes read the workdir process 0 holds
    # (they checked it with `check`), once process 0 has claimed it: the
    # caller waits for that (`parallel.barrier("workdir claimed")` in
    # `experiment.prepared`).
    return Claim(wd, None)
  _check(wd, config, extra)  # Refuse before writing anything.
  with checkpoint.disk_errors(wd / LOCK_FILE):
    try:
      wd.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      if e.errno == errno.ENOSPC:
        raise  # `disk_errors` reports it.
      # Where `_check_path`'s os.access says yes but the kernel says no (root
      # in /proc or on a read-only mount, a parent that vanished).
      raise LotteryError(f"workdir: {_q(wd)} cannot be created "
                         f"({e.strerror}); use a --workdir in a writable "
                         f"directory") from None
    fd = _lock(wd)
  held = Claim(wd, fd)
  try:
    holds = _check_run(wd, config, extra)  # Authoritative: under the lock.
    _clean(wd)
    new = config_json(config)
    if not holds or checkpoint.read_json(wd / CONFIG_FILE,
                                         unverified_ok=True) != new:
      checkpoint.write_json(wd / CONFIG_FILE, new)
    if extra:
      path = wd / FACTS_FILE
      # A replaced run's facts are not this one's.
      facts = _read_facts(path) if holds and path.exists() else {}
      if not set(extra) <= set(facts):
        checkpoint.write_json(path, {**extra, **facts})
  except BaseException:
    held.release()
    raise
  return held
