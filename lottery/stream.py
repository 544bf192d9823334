"""The streamed batch source: a dataset's splits as array_record files.

With `data.source='stream'` the training batches are not gathered from a
copy of the training set on the device: each compiled call's examples are
read from an array_record file through grain
(`grain.sources.ArrayRecordDataSource`, by random access in the loop's own
index order) on the host, and only that call's batches are put on the device.
The test (and validation) set is evaluated a batch at a time the same way.

The files live in the data cache (`data.cache_dir`, $LOTTERY_CACHE or
~/.cache/lottery) under records/<the digest of the dataset's bytes>/, one per split:
  train.array_record, test.array_record  one record per example: its input's
      raw bytes followed by its label's (the packed numpy record of
      `record_dtype`), uncompressed, one record per chunk (group_size 1: the
      fastest random access);
  train.json, test.json  the header: format, count, input dtype and shape,
      label dtype, record and file sizes, the dataset's name and number of
      classes.
Any dataset the framework loads is written there once, on its first
streamed run; each file is written to a temporary name and renamed, the
header last, so a header names a complete file. A run of a method that
reads its data through the train loop only (IMP, sparse training) on a
written cache does not load the dataset: the host holds none of it
(`open_written`). A file that does not match
its header, or that array_record cannot read (riegeli checks a hash of every
block and chunk), is refused in one line that says to delete it: a split
with either file missing is written again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from lottery.errors import LotteryError

SOURCES = ("memory", "stream")
FORMAT = 1
WRITER_OPTIONS = "group_size:1,uncompressed"
SPLITS = ("train", "test")


def record_dtype(x_dtype, x_shape, y_dtype) -> np.dtype:
  """One example's packed record: the input, then the label (no padding)."""
  return np.dtype([("x", np.dtype(x_dtype), tuple(x_shape)),
                   ("y", np.dtype(y_dtype))])


def cache_root(data, fingerprint: str) -> pathlib.Path:
  """The folder of a dataset's record files: <cache>/records/<fingerprint>.

  Args:
    data: the `config.data` ConfigDict (its cache_dir).
    fingerprint: `data.contents(data)` ('sha256:<hex>').
  """
  from lottery import data as data_lib  # pylint: disable=g-import-not-at-top
  return data_lib.cache_dir(data.cache_dir) / "records" / (
      fingerprint.split(":")[-1][:32])


def replace_atomic(path: pathlib.Path, write: Callable[[str], None]) -> None:
  """Calls write(tmp) for a temporary file beside `path`, then renames it."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(OSError):
      os.unlink(tmp)  # Left only if writing or the rename failed.


def write_split(path: pathlib.Path, x: np.ndarray, y: np.ndarray,
                **dataset) -> None:
  """Writes examples (x[i], y[i]) to the array_record file `path` and its
  header (`path` with suffix .json), each atomically, the header last.
  `dataset` (name=..., num_classes=...) is recorded in the header: with it,
  a later run opens the split without loading the dataset."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
  rec = np.empty(len(x), record_dtype(x.dtype, x.shape[1:], y.dtype))
  rec["x"], rec["y"] = x, y
  path.parent.mkdir(parents=True, exist_ok=True)

  def records(tmp):
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for r in rec:
        writer.write(r.tobytes())
    finally:
      writer.close()

  replace_atomic(path, records)
  header = {"format": FORMAT, "count": len(x), "x_dtype": x.dtype.str,
            "x_shape": list(x.shape[1:]), "y_dtype": y.dtype.str,
            "record_bytes": rec.dtype.itemsize,
            "file_bytes": path.stat().st_size, **dataset}

  def text(tmp):
    with open(tmp, "w") as f:
      json.dump(header, f)

  replace_atomic(path.with_suffix(".json"), text)


def cause(e: Exception) -> str:
  """An exception's type and the start of its first line."""
  line = str(e).splitlines()[0] if str(e) else ""
  first = line[:80]
  if len(line) > 80:  # Cut: from a parenthesis the cut left open, drop it.
    depth, start = 0, None
    for i, ch in enumerate(first):
      if ch == "(":
        depth, start = depth + 1, (i if depth == 0 else start)
      elif ch == ")" and depth:
        depth -= 1
    if depth:
      first = first[:start].rstrip()
  return f"{type(e).__name__}: {first}"


def _damaged(path, why: str) -> LotteryError:
  return LotteryError(f"data.source: stream cache file {os.fspath(path)} is "
                      f"unreadable ({why}); delete it to have the next run "
                      f"write it again from the dataset")


class Records:
  """A split's examples in an array_record file, read by index.

  `read(idx)` of an int array of any shape returns (x, y) with shapes
  idx.shape + the input's shape and idx.shape. `subset(rows)` is the view
  whose index i is the file's record rows[i] (a validation split's rows).
  """

  def __init__(self, path: os.PathLike):
    """Opens `path` and checks it against its header.

    Raises:
      LotteryError: naming the file, if it or its header is damaged.
    """
    self.path = pathlib.Path(path)
    self.rows: np.ndarray | None = None
    header_path = self.path.with_suffix(".json")
    try:
      with open(header_path) as f:
        h = json.load(f)
      self.dtype = record_dtype(h["x_dtype"], h["x_shape"], h["y_dtype"])
      count, size = int(h["count"]), int(h["file_bytes"])
      # Absent from a header written without them (a cache of an older
      # version): the dataset is then loaded to learn them.
      self.name, self.num_classes = h.get("name"), h.get("num_classes")
      if h["format"] != FORMAT or self.dtype.itemsize != h["record_bytes"]:
        raise ValueError("unknown format")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _damaged(header_path, cause(e)) from None
    try:
      actual = self.path.stat().st_size
    except OSError as e:
      raise _damaged(self.path, e.strerror) from None
    if actual != size:
      raise _damaged(self.path, f"{actual} bytes, its header says {size}")
    import grain  # pylint: disable=g-import-not-at-top
    try:
      self._source = grain.sources.ArrayRecordDataSource(os.fspath(self.path))
      n = len(self._source)
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(self.path, cause(e)) from None
    if n != count:
      raise _damaged(self.path, f"{n} records, its header says {count}")
    self._count = count
    if count:  # The first and last records are of the header's size.
      self._decode(self._read([0, count - 1]))

  def __len__(self) -> int:
    return self._count if self.rows is None else len(self.rows)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return self.dtype["x"].shape

  def subset(self, rows: np.ndarray) -> Records:
    """The view of records rows[0], rows[1], ... (of this view)."""
    rows = np.asarray(rows, np.int64)
    view = copy.copy(self)  # The same open source.
    view.rows = rows if self.rows is None else self.rows[rows]
    return view

  def _read(self, keys: list[int]) -> list[bytes]:
    try:
      return self._source.__getitems__(keys)
    except Exception as e:  # pylint: disable=broad-except
      raise _damaged(self.path, cause(e)) from None

  def _decode(self, records: list[bytes]) -> np.ndarray:
    if any(len(r) != self.dtype.itemsize for r in records):
      bad = next(len(r) for r in records if len(r) != self.dtype.itemsize)
      raise _damaged(self.path, f"a record of {bad} bytes, its header says "
                     f"{self.dtype.itemsize}")
    return np.frombuffer(b"".join(records), self.dtype)

  def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The examples of indices `idx` (any shape): (x, y)."""
    idx = np.asarray(idx)
    flat = idx.reshape(-1)
    if self.rows is not None:
      flat = self.rows[flat]
    rec = self._decode(self._read(flat.tolist())) if flat.size else \
        np.empty(0, self.dtype)
    return (rec["x"].reshape(idx.shape + self.example_shape),
            rec["y"].reshape(idx.shape))


def open_cache(data, ds, fingerprint: str) -> dict[str, Records]:
  """The dataset's record files, written first if the cache lacks them.

  Args:
    data: the `config.data` ConfigDict (cache_dir).
    ds: the loaded `data.Dataset` (written when a split's files are absent).
    fingerprint: its `data.contents`.

  Returns:
    {'train': Records, 'test': Records}.

  Raises:
    LotteryError: naming a file that is damaged or does not match its header.
  """
  root = cache_root(data, fingerprint)
  out = {}
  for split, x, y in (("train", ds.x_train, ds.y_train),
                      ("test", ds.x_test, ds.y_test)):
    path = root / f"{split}.array_record"
    if not (path.exists() and path.with_suffix(".json").exists()):
      try:
        write_split(path, x, y, name=ds.name, num_classes=ds.num_classes)
      except OSError as e:
        raise LotteryError(f"data.cache_dir: cannot write the stream cache "
                           f"{os.fspath(path)} ({e.strerror}); set "
                           f"data.cache_dir to a writable folder") from None
    out[split] = Records(path)
  return out


def open_written(data, fingerprint: str) -> dict[str, Records] | None:
  """The dataset's record files, if the cache holds both splits and their
  headers name the dataset and its classes (`open_cache` wrote them), so
  that a run need not load the dataset; else None.

  Raises:
    LotteryError: naming a file that is damaged or does not match its header.
  """
  root = cache_root(data, fingerprint)
  paths = {split: root / f"{split}.array_record" for split in SPLITS}
  if not all(p.exists() and p.with_suffix(".json").exists()
             for p in paths.values()):
    return None
  out = {split: Records(path) for split, path in paths.items()}
  if out["train"].num_classes is None or out["train"].name is None:
    return None
  return out


def sample(name: str, splits, num_classes: int):
  """The `data.Dataset` whose arrays hold the first example of each of
  `splits` ({'train': ..., 'test': ...}, read by index): their shapes, and
  an input to initialize a model with."""
  from lottery import data as data_lib  # pylint: disable=g-import-not-at-top
  x_tr, y_tr = splits["train"].read(np.arange(1))
  x_te, y_te = splits["test"].read(np.arange(1))
  return data_lib.Dataset(name, x_tr, y_tr, x_te, y_te, num_classes)


def prefetch(items: Iterable, load: Callable, depth: int = 1) -> Iterator:
  """Yields (item, load(item)) for `items`, loading up to `depth` items ahead
  in a background thread (host reads and transfers overlap the device's
  work). An exception of `load` is raised where its item would be yielded;
  a consumer that stops early stops the thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def put(entry) -> bool:
    """Queues `entry` unless the consumer has stopped; whether it did."""
    while not stop.is_set():
      with contextlib.suppress(queue.Full):
        q.put(entry, timeout=0.1)
        return True
    return False

  def work():
    try:
      for item in items:
        if not put((item, load(item), None)):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put((None, None, e))
      return
    put((end, None, None))

  thread = threading.Thread(target=work, daemon=True, name="lottery-prefetch")
  thread.start()
  try:
    while True:
      item, value, error = q.get()
      if error is not None:
        raise error
      if item is end:
        return
      yield item, value
  finally:
    stop.set()
    thread.join()  # Its load is bounded: nothing reads on after the caller.
