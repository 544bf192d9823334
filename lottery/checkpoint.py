"""Orbax save / restore of plain pytrees of arrays, verified; atomic JSON files.

Orbax writes a checkpoint to a temporary directory (<path>.orbax-checkpoint-tmp)
and renames it into place. `save` then writes, inside the checkpoint directory
and atomically (temporary file + rename), a file CHECKSUMS that holds

  - per array: sha256 over its dtype, shape and bytes;
  - per file orbax wrote: its size and the sha256 of its bytes;

and whose first line is the sha256 of the rest of it. `restore` checks the
files before orbax reads anything and the arrays after; a changed, truncated
or missing file, a missing CHECKSUMS (a crash between orbax's save and its
write: an incomplete checkpoint) or an error of orbax raises LotteryError
naming the directory and what to delete so that a rerun writes it again.

Files and directories get the usual permissions: 0666 / 0777 less the umask.
A full disk (ENOSPC) while writing raises LotteryError.

Inside `background_writes()` (every driver's run, see
`lottery.experiment.prepared`) `save`, `write_json` and `remove` return at
once and run in order on one writer thread, so a ticket is written while the
next job trains. The disk then always holds a prefix of the run's writes, as
it would after a crash of the synchronous version, so resuming is unchanged.
A read of a path (`restore`, `read_json`, `wait_for`) first waits for the
queued writes that touch it; the first failed write stops every later one
and is raised in the run's thread at its next write, read or at the block's
end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from lottery.errors import LotteryError
from lottery.errors import quiet_logs

CHECKSUMS = "CHECKSUMS"
# Names of the temporary files and directories that a killed writer leaves:
# A killed writer's leftovers, by name: write_json's '<name>.lottery-<8
# random characters>.tmp' (tempfile.mkstemp), `remove`'s
# '<name>.lottery-removing-<pid>-<ns>.tmp' and orbax's
# '<name>.orbax-checkpoint-tmp*'; not a user's 'notes.20240101.tmp'.
TMP_SUFFIX = ".tmp"
ORBAX_TMP = ".orbax-checkpoint-tmp"
_TMP_PREFIX = ".lottery-"
_LEFTOVER = re.compile(
    rf".+{re.escape(_TMP_PREFIX)}(?:[a-z0-9_]{{8}}|removing-\d+-\d+)"
    rf"{re.escape(TMP_SUFFIX)}|.+{re.escape(ORBAX_TMP)}.*")
_HEADER = "lottery-checksums-v1 sha256:"
# Files orbax writes into every checkpoint; one of them without CHECKSUMS
# means the save was cut short.
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")

_CKPTR = None
# Orbax's checkpointer, used from the writer thread and the run's, one call
# at a time.
_ORBAX_LOCK = threading.RLock()


def _orbax():
  """orbax.checkpoint, imported on first use: 0.2 s of every start, which
  `background_writes` spends on its thread while the first job trains."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def _checkpointer():
  """The process's orbax checkpointer (an `ocp.Checkpointer`)."""
  global _CKPTR
  if _CKPTR is None:
    ocp = _orbax()
    if jax.process_count() == 1:
      _CKPTR = ocp.PyTreeCheckpointer()
    else:
      # Several processes: process 0 alone writes, and any process reads on
      # its own; orbax must not wait for the others.
      me = ocp.options.MultiprocessingOptions(
          primary_host=jax.process_index(),
          active_processes={jax.process_index()})
      _CKPTR = ocp.Checkpointer(
          ocp.PyTreeCheckpointHandler(multiprocessing_options=me),
          multiprocessing_options=me)
  return _CKPTR


def _is_enospc(e: BaseException) -> bool:
  """Whether `e` (or an exception it came from) is a full disk.

  Tensorstore reports one as a ValueError whose text carries the OS's.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if os.strerror(errno.ENOSPC) in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
  """Turns a full disk, or a file or folder of the workdir that cannot be
  written, while writing `path` into a LotteryError.

  Raises:
    LotteryError: ('workdir: no space left on device while writing ...',
      'workdir: cannot write ...').
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if _is_enospc(e):
      raise LotteryError(
          f"workdir: no space left on device while writing "
          f"{os.fspath(path)!r}; free space and rerun the same command to "
          f"resume") from None
    if isinstance(e, PermissionError) or (
        isinstance(e, OSError) and e.errno == errno.EROFS):
      raise permission_error(e, path) from None
    raise


def permission_error(e: OSError, path: str | os.PathLike) -> LotteryError:
  """The one line for a file or folder that cannot be written."""
  where = e.filename
  if where is None or os.fspath(where).endswith(TMP_SUFFIX):
    where = path  # Not the temporary file beside it.
  return LotteryError(
      f"workdir: cannot write {os.fspath(where)!r} ({e.strerror}); make it "
      f"writable and rerun the same command to resume")


def _umask() -> int:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)  # No way to read it without setting it elsewhere.
  os.umask(mask)
  return mask


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + _TMP_PREFIX,
                             suffix=TMP_SUFFIX)
  try:
    # mkstemp creates 0600; give the file the mode open() would.
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def _array_digest(x: np.ndarray) -> str:
  x = np.ascontiguousarray(x)
  h = hashlib.sha256(f"{x.dtype.str}|{x.shape}|".encode())
  h.update(x.tobytes())
  return h.hexdigest()


def _array_digests(tree: Any) -> dict[str, str]:
  leaves = jax.tree.flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): _array_digest(np.asarray(x))
          for p, x in leaves}


def _file_digests(path: pathlib.Path) -> dict[str, list]:
  """{relative path: [size, sha256]} of the files under `path`."""
  out = {}
  for p in sorted(path.rglob("*")):
    if p.is_file() and p.name != CHECKSUMS:
      out[p.relative_to(path).as_posix()] = [p.stat().st_size,
                                             _file_digest(p)]
  return out


def _file_digest(p: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(p, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _NoOrbaxErrors(logging.Filter):
  """Drops orbax's logged copies (with tracebacks, from its writer threads)
  of the errors that `save` raises anyway."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR or "orbax" not in record.pathname


# Set while an orbax save runs and once one failed in this process: a failed
# one's asyncio loop closes with tensorstore writes still in flight (see
# `_quiet_closed_loop`).
_IN_SAVE = 0
_SAVE_FAILED = False
_HOOK_INSTALLED = False


def _is_closed_loop(unraisable) -> bool:
  """Whether an unraisable exception is asyncio's 'Event loop is closed'."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


class _NoLostTasks(logging.Filter):
  """Drops asyncio's 'Task / Future exception was never retrieved' reports
  (with tracebacks, logged when the tasks are garbage collected, often at
  exit) of the writes of orbax's aborted save; the save's own error (one
  line) says what happened."""

  def filter(self, record: logging.LogRecord) -> bool:
    first = str(record.msg).partition("\n")[0]
    return not first.endswith("exception was never retrieved")


def _quiet_lost_tasks() -> None:
  """After a failed save: its writer tasks are not reported again."""
  log = logging.getLogger("asyncio")
  if not any(isinstance(f, _NoLostTasks) for f in log.filters):
    log.addFilter(_NoLostTasks())


def _quiet_closed_loop() -> None:
  """Drops, after a failed save, the 'RuntimeError: Event loop is closed'
  tracebacks that tensorstore prints (as unraisable exceptions, up to dozens)
  when the writes of orbax's aborted save finish after its event loop
  closed; the save's own error (one line) says what happened. Anything else
  goes to the previous hook."""
  global _HOOK_INSTALLED
  if _HOOK_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if (_SAVE_FAILED or _IN_SAVE) and _is_closed_loop(unraisable):
      return
    previous(unraisable)

  sys.unraisablehook = hook
  _HOOK_INSTALLED = True


def is_writer() -> bool:
  """Whether this process writes (process 0 of a multi-host run does; the
  others read the shared workdir and never write)."""
  return jax.process_index() == 0


class _Writer:
  """One thread that runs a run's writes in the order they were queued."""

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="lottery-writer")
    self._queued: list[tuple[pathlib.Path, bool,
                             concurrent.futures.Future]] = []
    self._error: BaseException | None = None
    self._pool.submit(self._run, _orbax)  # While the run builds and trains.

  def submit(self, path: pathlib.Path, write, removes: bool = False) -> None:
    self.check()
    self._forget_done()
    self._queued.append((path.absolute(), removes,
                         self._pool.submit(self._run, write)))

  def _forget_done(self) -> None:
    """Drops the finished writes: the disk answers for them (the queue then
    stays as short as the writes in flight, however long the run)."""
    self._queued = [q for q in self._queued if not q[2].done()]

  def _run(self, write) -> None:
    if self._error is not None:
      return  # After a failed write, nothing more is written.
    try:
      write()
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e

  def last(self, path: pathlib.Path) -> tuple[int, bool] | None:
    """(index, whether it removes) of the last queued write to `path`, above
    it or under it."""
    path = path.absolute()
    found = None
    for i, (p, removes, _) in enumerate(self._queued):
      if p == path or path in p.parents or p in path.parents:
        found = i, removes and (p == path or p in path.parents)
    return found

  def wait_for(self, path: pathlib.Path | None) -> None:
    """Waits for the queued writes to `path`, above it or under it (all of
    them if None); raises a failed write's error."""
    last = len(self._queued) - 1 if path is None else (
        (self.last(path) or (-1, False))[0])
    if last >= 0:
      self._queued[last][2].result()  # In order: the earlier ones are done.
      self._forget_done()
    self.check()

  def check(self) -> None:
    if self._error is not None:
      raise self._error

  def close(self) -> None:
    try:
      self.wait_for(None)
    finally:
      self._pool.shutdown(wait=True)


_WRITER: _Writer | None = None


@contextlib.contextmanager
def background_writes() -> Iterator[None]:
  """Runs this process's checkpoint writes on a writer thread (see the
  module doc) until the block ends, which waits for them all.

  Nested blocks share the outer one's thread; several processes (one writes,
  the others read after barriers) write synchronously.

  Raises:
    The first failed write's error (e.g. LotteryError for a full disk), at
    the next write or read of the block, or at its end. An exception of the
    block itself wins over it; the writes queued before it still finish.
  """
  global _WRITER
  if _WRITER is not None or jax.process_count() > 1:
    yield
    return
  writer = _WRITER = _Writer()
  try:
    yield
  except BaseException:
    _WRITER = None
    with contextlib.suppress(BaseException):
      writer.close()
    raise
  _WRITER = None
  writer.close()


def _write(path: pathlib.Path, write, removes: bool = False) -> None:
  """Runs `write()` now, or queues it inside `background_writes`."""
  if _WRITER is None:
    write()
  else:
    _WRITER.submit(path, write, removes)


def wait_for(path: str | os.PathLike) -> None:
  """Returns once every queued write touching `path` is on disk (at once
  outside `background_writes`); raises a failed write's error."""
  if _WRITER is not None:
    _WRITER.wait_for(pathlib.Path(path))


def exists(path: str | os.PathLike) -> bool:
  """Whether `path` exists once the queued writes are done: False without
  waiting when the last of them to touch it removes it (or a directory
  above it), else `wait_for(path)` and a look."""
  path = pathlib.Path(path)
  if _WRITER is not None:
    last = _WRITER.last(path)
    if last is not None and last[1]:
      _WRITER.check()
      return False
  wait_for(path)
  return path.exists()


def save(path: str | os.PathLike, tree: Any) -> None:
  """Saves a pytree of arrays with its checksums (no-op if not `is_writer`).

  Args:
    path: the checkpoint directory; it must not exist yet.
    tree: nested dicts of arrays (no None leaves).

  Raises:
    LotteryError: if the disk is full (nothing is left at `path` then).
  """
  if not is_writer():
    return
  path = pathlib.Path(path)
  tree = jax.device_get(tree)  # Host copies, before the caller goes on.
  _write(path, lambda: _save(path, tree))


def _save(path: pathlib.Path, tree: Any) -> None:
  global _SAVE_FAILED, _IN_SAVE
  _quiet_closed_loop()
  try:
    with disk_errors(path):
      with quiet_logs(_NoOrbaxErrors()), _ORBAX_LOCK:
        _IN_SAVE += 1
        try:
          _checkpointer().save(os.path.abspath(path), tree)  # orbax: absolute
        finally:
          _IN_SAVE -= 1
      body = json.dumps({"arrays": _array_digests(tree),
                         "files": _file_digests(path)},
                        indent=1, sort_keys=True).encode()
      head = (_HEADER + hashlib.sha256(body).hexdigest() + "\n").encode()
      _write_atomic(path / CHECKSUMS, head + body)
  except BaseException as e:
    _SAVE_FAILED = True
    _quiet_lost_tasks()
    if not isinstance(e, LotteryError):
      raise
    # Frees the space the partial checkpoint took; directly, not through
    # `remove`, which would queue behind this very write.
    shutil.rmtree(path, ignore_errors=True)
    for tmp in path.parent.glob(path.name + ORBAX_TMP + "*"):
      shutil.rmtree(tmp, ignore_errors=True)
    raise


# What to delete so that rerunning the same command rewrites a damaged file:
# functions `path -> remedy or None` of the modules that own a part of the
# workdir's layout (lottery.tickets: a ticket's files; lottery.imp: its
# rewind point), newest first; see `register_remedy`.
_REMEDIES: list[Callable[[pathlib.Path], str | None]] = []


def register_remedy(fn: Callable[[pathlib.Path], str | None]
                    ) -> Callable[[pathlib.Path], str | None]:
  """Registers `fn(path) -> 'delete ...' or None` (a decorator): the owner
  of a part of a workdir's layout says what rewrites a damaged file of it."""
  _REMEDIES.insert(0, fn)
  return fn


def _remedy(path: pathlib.Path) -> str:
  """What to delete so that rerunning the same command rewrites `path`:
  the registered owners' answer, else mid-run checkpoints go with
  progress/, config.json cannot be rewritten, and any other file is
  deleted alone."""
  for fn in _REMEDIES:
    remedy = fn(path)
    if remedy is not None:
      return remedy
  if path.parent.name == "progress":
    return f"delete {os.fspath(path.parent)!r}"
  if path.name == "config.json":
    return "restore it from a copy, or use a new --workdir"
  return f"delete {os.fspath(path)!r}"


def _damaged(path: pathlib.Path, what: str, noun: str = "checkpoint"
             ) -> LotteryError:
  what = " ".join(what.split())[:300]  # One line, whatever orbax said.
  remedy = _remedy(path)
  if remedy.startswith("delete"):
    remedy += " and rerun the same command"
  return LotteryError(f"workdir: {noun} {os.fspath(path)!r} is damaged "
                      f"({what}); {remedy}")


def damaged_file(path: str | os.PathLike, what: str) -> LotteryError:
  """The error for a damaged JSON file of a workdir: names the file, what is
  wrong and what to delete so that a rerun writes it again."""
  return _damaged(pathlib.Path(path), what, "file")


def _read_checksums(path: pathlib.Path) -> dict:
  try:
    data = (path / CHECKSUMS).read_bytes()
  except FileNotFoundError:
    if any((path / m).exists() for m in _ORBAX_MARKERS):
      raise _damaged(path, f"incomplete: {CHECKSUMS} is missing") from None
    raise LotteryError(f"workdir: {os.fspath(path)!r} is not a checkpoint "
                       f"({CHECKSUMS} missing)") from None
  head, _, body = data.partition(b"\n")
  if head != (_HEADER + hashlib.sha256(body).hexdigest()).encode():
    raise _damaged(path, f"{CHECKSUMS} does not match its own checksum")
  return json.loads(body)


def restore(path: str | os.PathLike) -> Any:
  """Restores a pytree saved by `save`, as numpy arrays, verified.

  Raises:
    LotteryError: if `path` does not exist, is not a checkpoint, or any of
      its files or arrays differs from the checksums written with it.
  """
  path = pathlib.Path(path)
  wait_for(path)
  if not path.exists():
    # A workdir's checkpoint (a ticket's arrays/, say): what to delete so
    # that a rerun writes it again.
    remedy = _remedy(path)
    remedy = ("" if remedy == f"delete {os.fspath(path)!r}" else
              f"; {remedy} and rerun the same command")
    raise LotteryError(f"workdir: checkpoint {os.fspath(path)!r} does not "
                       f"exist{remedy}")
  if not path.is_dir():
    raise LotteryError(f"workdir: {os.fspath(path)!r} is not a checkpoint "
                       f"(not a directory)")
  try:
    sums = _read_checksums(path)
    for name, (size, digest) in sums["files"].items():
      f = path / name
      if not f.is_file():
        raise _damaged(path, f"{name} is missing")
      if f.stat().st_size != size or _file_digest(f) != digest:
        raise _damaged(path, f"{name} differs from its checksum")
    try:
      with _ORBAX_LOCK:
        ck, where = _checkpointer(), os.path.abspath(path)  # orbax: absolute
        meta = ck.metadata(where)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        restore_args = _orbax().RestoreArgs(restore_type=np.ndarray)
        args = jax.tree.map(lambda _: restore_args, meta)
        tree = ck.restore(where, restore_args=args)
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(path, f"orbax cannot read it: {type(e).__name__}: {e}"
                     ) from None
    if _array_digests(tree) != sums["arrays"]:
      raise _damaged(path, "its arrays differ from their checksums")
    return tree
  except LotteryError:
    raise
  except PermissionError as e:
    raise LotteryError(f"workdir: checkpoint {os.fspath(path)!r} cannot be "
                       f"read ({e})") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _damaged(path, f"{type(e).__name__}: {e}") from None


def is_leftover(name: str) -> bool:
  """Whether a file or directory name is a killed writer's leftover."""
  return _LEFTOVER.fullmatch(name) is not None


def remove(path: str | os.PathLike) -> None:
  """Deletes a checkpoint (or any directory or file) if it exists (process
  0). At once for a reader: it is first renamed to a temporary name, which a
  process killed while deleting it leaves for `workdir.claim` to delete."""
  if not is_writer():
    return
  path = pathlib.Path(path)

  def rm():
    gone = path.with_name(f"{path.name}{_TMP_PREFIX}removing-{os.getpid()}-"
                          f"{time.time_ns()}{TMP_SUFFIX}")
    try:
      os.rename(path, gone)
    except FileNotFoundError:
      return
    except OSError:  # Not renamable here: deleted in place, as before.
      gone = path
    if gone.is_dir() and not gone.is_symlink():
      shutil.rmtree(gone, ignore_errors=True)
    else:
      gone.unlink(missing_ok=True)
  _write(path, rm, removes=True)


def _strict(obj: Any) -> Any:
  """`obj` with NaN and +-inf replaced by None, numpy scalars by Python's."""
  if isinstance(obj, dict):
    return {k: _strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_strict(v) for v in obj]
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


# The key under which `write_json` embeds a JSON object's checksum.
JSON_CHECKSUM = "_sha256"


def _json_digest(obj: Any) -> str:
  """sha256 of `obj`'s canonical JSON (sorted keys, no spaces): any change
  of a value, key or structure changes it, whitespace does not."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                   allow_nan=False).encode()).hexdigest()


def json_form(obj: Any) -> Any:
  """`obj` as `read_json` reads it back after `write_json` (string keys,
  lists, None for NaN and +-inf)."""
  return json.loads(json.dumps(_strict(obj), allow_nan=False))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes strict JSON atomically (temporary file + rename), with a checksum.

  NaN and +-inf, which strict JSON cannot spell, are written as null,
  anywhere in nested dicts and lists; numpy scalars as Python numbers. A
  JSON object (a dict: every file of a workdir) gets one more key,
  JSON_CHECKSUM: the sha256 of its canonical JSON, which `read_json`
  verifies and removes.

  Raises:
    LotteryError: if the disk is full (the file is then left as it was).
  """
  if not is_writer():
    return
  path = pathlib.Path(path)
  # Serialized now: the caller may change `obj` once this returns.
  obj = json_form(obj)
  if isinstance(obj, dict):
    if JSON_CHECKSUM in obj:
      raise ValueError(f"write_json: {JSON_CHECKSUM!r} is a reserved key")
    obj[JSON_CHECKSUM] = _json_digest(obj)
  data = (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"
          ).encode()

  def write():
    with disk_errors(path):
      path.parent.mkdir(parents=True, exist_ok=True)
      _write_atomic(path, data)
  _write(path, write)


def read_json(path: str | os.PathLike, *, unverified_ok: bool = False) -> Any:
  """Reads a JSON file written by `write_json`, verified against its
  checksum (which is not part of the result).

  Args:
    path: the file.
    unverified_ok: accept a JSON object without a checksum (a file written
      before `write_json` wrote them: see `predates_checksums`).

  Raises:
    OSError: if it cannot be read (e.g. FileNotFoundError).
    LotteryError: if it is not valid JSON, differs from its checksum, or is
      an object without one (unless `unverified_ok`); the message names the
      file and what to delete so that a rerun writes it again.
  """
  wait_for(path)
  with open(path, "rb") as f:
    data = f.read()
  try:
    obj = json.loads(data)
  except ValueError as e:
    raise _damaged(pathlib.Path(path), f"not valid JSON: {e}", "file"
                   ) from None
  if isinstance(obj, dict):
    if JSON_CHECKSUM in obj:
      digest = obj.pop(JSON_CHECKSUM)
      try:
        ok = digest == _json_digest(obj)
      except ValueError:  # NaN spelled in the file: not write_json's.
        ok = False
      if not ok:
        raise _damaged(pathlib.Path(path), "its content differs from its "
                       "checksum", "file")
    elif not unverified_ok:
      raise _damaged(pathlib.Path(path), f"it has no checksum "
                     f"({JSON_CHECKSUM})", "file")
  return obj


def predates_checksums(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` was written before JSON files had checksums: its
  config.json (written first, when a run claims its workdir) is an object
  without one. Its JSON files are then read without a checksum where they
  have none (`read_json(..., unverified_ok=True)`); in any other workdir a
  JSON file without a checksum is damaged."""
  path = pathlib.Path(workdir) / "config.json"
  wait_for(path)
  try:
    obj = json.loads(path.read_bytes())
  except (OSError, ValueError):
    return False
  return isinstance(obj, dict) and JSON_CHECKSUM not in obj
