"""Datasets as in-memory arrays: MNIST-1D (offline default), TFDS, .npz.

Every loader returns a `Dataset` of numpy arrays: float32 inputs and int32
labels. Nothing is downloaded: MNIST-1D is generated locally by the `mnist1d`
package (`make_dataset`, the standard 4000/1000 split, seed 42) and cached;
TFDS datasets are read from a local `data_dir` prepared beforehand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging as logging_std
import os
import pathlib
import re
import tempfile
import time

from absl import logging
import numpy as np

from lottery.errors import LotteryError
from lottery.errors import quiet_logs

# imagenet2012: named for the ImageNet recipes; they stream it, decoded and
# cropped on the host (`lottery.images`, data.crop='inception'). In memory
# (data.crop='none') it needs equal-sized images and a machine that holds it.
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet2012")
# Datasets whose test set is TFDS's 'validation' split.
TEST_SPLIT = {"imagenet2012": "validation"}
# TFDS's file formats that `as_data_source` reads by index.
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")
# 'images': a folder of encoded images in array_record files (`data.path`,
# written by `lottery.images.write`).
NAMES = ("mnist1d", "npz", "images") + TFDS_NAMES


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's splits as arrays. With data.crop != 'none' the examples are
  read as they are streamed (`lottery.images`) and the arrays hold one
  example of each split, for its shapes."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def cache_dir(configured: str = "") -> pathlib.Path:
  """Where generated data is cached: `configured`, $LOTTERY_CACHE, or
  ~/.cache/lottery."""
  d = configured or os.environ.get("LOTTERY_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "lottery")
  return pathlib.Path(d)


def _save_npz_atomic(path: pathlib.Path, **arrays) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


_MNIST1D_SHAPES = {"x_train": (4000, 40), "y_train": (4000,),
                   "x_test": (1000, 40), "y_test": (1000,)}


def _read_mnist1d_cache(path: pathlib.Path) -> Dataset:
  """The cached set; raises (anything) if the file is not a sound cache."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in _MNIST1D_SHAPES}
  for k, shape in _MNIST1D_SHAPES.items():
    a = arrays[k]
    if a.shape != shape or not np.issubdtype(a.dtype, np.number) or \
        not np.isfinite(a).all():
      raise ValueError(f"{k}: {a.dtype} {a.shape}")
  for k in ("y_train", "y_test"):
    if not (np.issubdtype(arrays[k].dtype, np.integer) and
            arrays[k].min() >= 0 and arrays[k].max() < 10):
      raise ValueError(f"{k}: labels outside 0..9")
  return Dataset("mnist1d", arrays["x_train"].astype(np.float32),
                 arrays["y_train"].astype(np.int32),
                 arrays["x_test"].astype(np.float32),
                 arrays["y_test"].astype(np.int32), 10)


def mnist1d(cache: str = "") -> Dataset:
  """The standard MNIST-1D set (4000 train / 1000 test, length 40, 10 classes).

  Generated with `mnist1d.data.make_dataset(get_dataset_args())` (never
  `get_dataset`, which downloads) and cached as an .npz. A cache that cannot be
  read or is damaged is regenerated (with one warning); a cache directory that
  cannot be written is skipped.
  """
  path = cache_dir(cache) / "mnist1d_standard.npz"
  if path.exists():
    try:
      return _read_mnist1d_cache(path)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("MNIST-1D cache %s is unreadable (%s: %s); regenerating "
                      "it", path, type(e).__name__, str(e)[:80])
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  d = make_dataset(get_dataset_args())
  arrays = dict(x_train=d["x"], y_train=d["y"], x_test=d["x_test"],
                y_test=d["y_test"])
  try:
    _save_npz_atomic(path, **arrays)
  except OSError:
    pass  # An unwritable cache costs a regeneration next time, nothing more.
  return Dataset("mnist1d", arrays["x_train"].astype(np.float32),
                 arrays["y_train"].astype(np.int32),
                 arrays["x_test"].astype(np.float32),
                 arrays["y_test"].astype(np.int32), 10)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 100_000
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # A member first; an empty zip.


def _npz_error(why: str) -> LotteryError:
  return LotteryError(f"data.path: {why}")


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """The four arrays of an .npz file, each refused with its true cause."""
  if not path:
    raise _npz_error("set it to an .npz file for data.name='npz' (got '')")
  if os.path.isdir(path):
    raise _npz_error(f"{path!r} is a directory, not an .npz file")
  if not os.path.isfile(path):
    raise _npz_error(f"no such file {path!r}")
  try:
    with open(path, "rb") as fh:
      head = fh.read(6)
  except OSError as e:
    raise _npz_error(f"cannot read {path!r} ({e.strerror})") from None
  if head == b"\x93NUMPY":
    raise _npz_error(f"{path!r} is a single .npy array; save the four arrays "
                     f"with np.savez(path, x_train=..., y_train=..., "
                     f"x_test=..., y_test=...)")
  if head[:4] not in _ZIP_MAGIC:
    raise _npz_error(f"cannot read {path!r} as .npz (not a zip archive: it "
                     f"starts with {head!r})")
  arrays = {}
  try:
    # An open file of our own: np.load leaks its own if the zip is damaged.
    with open(path, "rb") as fh, np.load(fh) as f:
      missing = [k for k in NPZ_KEYS if k not in f.files]
      if missing:
        raise _npz_error(f"{path!r} lacks arrays {missing} (has {f.files})")
      for k in NPZ_KEYS:
        try:
          arrays[k] = f[k]
        except ValueError as e:
          if "allow_pickle" not in str(e):
            raise
          raise _npz_error(f"{k} in {path!r} holds Python objects (dtype "
                           f"object); save numeric arrays") from None
        if not isinstance(arrays[k], np.ndarray):  # A member not in .npy.
          raise _npz_error(f"{k} in {path!r} is not a .npy array (the "
                           f"archive was not written by np.savez)")
  except LotteryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # BadZipFile (truncated: no central directory), bad CRC, zlib errors,
    # EOFError or a broken .npy header inside: the file is damaged.
    raise _npz_error(f"cannot read {path!r} as .npz, the file is damaged "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:100]})"
                     ) from None
  return arrays


def _check_inputs(k: str, x: np.ndarray, path: str) -> np.ndarray:
  """x as float32, or a LotteryError naming what is wrong with it."""
  if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer) or
          np.issubdtype(x.dtype, np.floating)):
    raise _npz_error(f"{k} must hold real numbers (got dtype {x.dtype} in "
                     f"{path!r})")
  if not 2 <= x.ndim <= 4:
    raise _npz_error(f"{k} must have shape (N, L), (N, L, C) or (N, H, W, C) "
                     f"(got shape {x.shape} in {path!r})")
  if x.size == 0:
    raise _npz_error(f"{k} is empty (got shape {x.shape} in {path!r})")
  if not np.issubdtype(x.dtype, np.floating):
    return x.astype(np.float32)  # Integers and bools are finite in float32.
  with np.errstate(over="ignore"):  # Refused just below.
    out = x.astype(np.float32, copy=False)
  # min and max propagate NaN and return an inf: no temporary array, whose
  # pages a fresh process pays for (0.12 s for 188 MB against 0.01 s).
  if not (np.isfinite(out.min()) and np.isfinite(out.max())):
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if nan or inf:
      raise _npz_error(f"{k} holds non-finite values (got {nan} NaN and {inf} "
                       f"inf of {x.size} in {path!r})")
    raise _npz_error(f"{k} holds values beyond float32's range (got max |x| "
                     f"{np.abs(x).max():g} in {path!r})")
  return out


def _check_labels(k: str, y: np.ndarray, rows: int, path: str) -> np.ndarray:
  """y as int32, or a LotteryError naming what is wrong with it."""
  x_name = "x" + k[1:]
  if y.ndim != 1 or len(y) != rows:
    raise _npz_error(f"{x_name} has {rows} rows but {k} has shape {y.shape} "
                     f"(want ({rows},))")
  if np.issubdtype(y.dtype, np.floating):
    bad = ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
      raise _npz_error(f"{k} must hold integer class labels (got "
                       f"{float(y[bad][0])} among {y.dtype} labels in "
                       f"{path!r})")
  elif not np.issubdtype(y.dtype, np.integer):
    raise _npz_error(f"{k} must hold integer class labels (got dtype "
                     f"{y.dtype} in {path!r})")
  lo, hi = y.min(), y.max()
  if lo < 0 or hi >= MAX_CLASSES:
    raise _npz_error(f"{k} must hold labels in [0, {MAX_CLASSES}) (got "
                     f"{lo if lo < 0 else hi} in {path!r})")
  return y.astype(np.int32)


def from_npz(path: str) -> Dataset:
  """A user's arrays: an .npz with x_train, y_train, x_test, y_test.

  Accepted (other arrays in the file are ignored):
    x_train, x_test: (N, L) or (N, L, C) for 1-D inputs (sequences, feature
      vectors; MLPs flatten every shape), or (N, H, W, C) for 2-D
      convolutions; train and test examples of the same shape; N >= 1. Any
      real dtype (bool, integer, floating) is converted to float32; NaN, inf
      and values beyond float32's range are refused. Inputs are used as given:
      `standardize` scales them as the TFDS loader does.
    y_train, y_test: (N,) class labels in [0, 100000): an integer dtype, or a
      floating one whose values are all exactly integral (as pandas often
      saves labels); converted to int32. The number of classes C is the
      largest label + 1; labels need not cover 0..C-1 (a class may be absent
      from a split).

  Raises:
    LotteryError: 'data.path: ...' naming the cause: no file, a directory, a
      single .npy, not a zip, a damaged archive, a missing array, object or
      string dtypes, wrong or mismatched shapes, empty arrays, non-finite
      inputs, labels that are not integers in range.
  """
  xs = _read_npz(path)
  out = {}
  for split in ("train", "test"):
    kx, ky = "x_" + split, "y_" + split
    out[kx] = _check_inputs(kx, xs[kx], path)
    out[ky] = _check_labels(ky, xs[ky], len(xs[kx]), path)
  if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
    raise _npz_error(f"x_test has examples of shape {out['x_test'].shape[1:]} "
                     f"but x_train {out['x_train'].shape[1:]} (in {path!r})")
  num_classes = int(max(out["y_train"].max(), out["y_test"].max())) + 1
  return Dataset(os.path.basename(path), *(out[k] for k in NPZ_KEYS),
                 num_classes)


def standardize(ds: Dataset) -> Dataset:
  """Inputs scaled per channel by the training set's mean and std.

  The channel is the last axis of (N, L, C) and (N, H, W, C) inputs; (N, L)
  inputs are one channel. Test inputs use the training statistics. The same
  scaling as the TFDS loader: (x - mean) / (std + 1e-6), float32.
  """
  axes = (0, 1) if ds.x_train.ndim == 2 else tuple(range(ds.x_train.ndim - 1))
  mean = ds.x_train.mean(axes, dtype=np.float32)
  std = ds.x_train.std(axes, dtype=np.float32) + np.float32(1e-6)
  return dataclasses.replace(ds, x_train=(ds.x_train - mean) / std,
                             x_test=(ds.x_test - mean) / std)


def _tfds_prepare_hint(name: str, data_dir: str) -> str:
  return (f"prepare it on a machine with internet access with `pip install "
          f"tensorflow tensorflow-datasets && tfds build {name} "
          f"--file_format=array_record --data_dir=DIR`, copy DIR here and set "
          f"--config.data.data_dir=DIR (looked in {data_dir!r})")


def _not_prepared(name: str, builder) -> LotteryError:
  manual = ""
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    # imagenet2012 and others: TFDS cannot fetch their files itself.
    manual = (f"; {name!r} first needs its files downloaded by hand into "
              f"DIR/downloads/manual/ (TFDS's instructions for {name}; "
              f"docs/data.md)")
  return LotteryError(f"data.data_dir: TFDS dataset {name!r} is not prepared; "
                      f"{_tfds_prepare_hint(name, builder.data_dir)}{manual}")


class _NoVariantWarnings(logging_std.Filter):
  """Drops TFDS's warnings about a dataset folder without (or with part of)
  a prepared dataset ('Variant folder ... has no dataset_info.json'): the
  caller raises its own one-line error for an unprepared dataset."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return not (record.levelno == logging_std.WARNING
                and str(record.msg).startswith("Variant folder "))


def tfds_source(name: str, split: str, data_dir: str | None):
  """(TFDS's random-access data source of the split, the number of classes,
  the prepared dataset's folder).

  Raises:
    LotteryError: naming data.data_dir if the dataset is not prepared or not
      readable (array_record format is needed).
  """
  with quiet_logs(_NoVariantWarnings()):
    return _tfds_source_quietly(name, split, data_dir or None)


def _tfds_builder(name: str, data_dir: str | None):
  """`tfds.builder(name, data_dir=data_dir)`. For a dataset not prepared
  there, TFDS makes a temporary directory for metadata it would fetch from
  GCS (`DatasetInfo.initialize_from_bucket`; off, so it stays empty) and
  never removes it: made inside one of ours, removed here."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="lottery_tfds_") as scratch:
    saved, tempfile.tempdir = tempfile.tempdir, scratch
    try:
      return tfds.builder(name, data_dir=data_dir)
    finally:
      tempfile.tempdir = saved


def _tfds_source_quietly(name: str, split: str, data_dir: str | None):
  builder = _tfds_builder(name, data_dir)
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise _not_prepared(name, builder) from None
    _check_prepared(name, split, builder)
    first = str(e).splitlines()[0]
    raise LotteryError(f"data.data_dir: cannot read TFDS dataset {name!r} "
                       f"({first}); re-prepare it in array_record format: "
                       f"{_tfds_prepare_hint(name, builder.data_dir)}"
                       ) from None
  try:  # Opens the record files now: a missing or damaged one fails here.
    if len(source):
      source[0]  # pylint: disable=pointless-statement
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(name, split, os.fspath(builder.data_dir), e) from None
  return (source, builder.info.features["label"].num_classes,
          os.fspath(builder.data_dir))


def _unreadable(name: str, split: str, where: str, e: Exception,
                example: int | None = None) -> LotteryError:
  """The one-line error for a TFDS split's records that cannot be read
  (its `example`, where one past the first fails)."""
  first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
  what = f"example {example} of the" if example is not None else "the"
  return LotteryError(
      f"data.data_dir: cannot read {what} {split!r} records of TFDS dataset "
      f"{name!r} in {where!r} ({first}); {_tfds_prepare_hint(name, where)}")


def _check_prepared(name: str, split: str, builder) -> None:
  """Raises the LotteryError for a prepared TFDS dataset that random access
  cannot read: a file format other than array_record, or no such split."""
  fmt = builder.info.file_format
  fmt = getattr(fmt, "value", fmt)
  where = os.fspath(builder.data_dir)
  if fmt not in RANDOM_ACCESS_FORMATS:
    raise LotteryError(
        f"data.data_dir: TFDS dataset {name!r} in {where!r} is prepared as "
        f"{fmt}, which cannot be read by index; convert it with `pip install "
        f"tensorflow tensorflow-datasets && tfds convert_format "
        f"--dataset_version_dir={where} --out_file_format=array_record` or "
        f"prepare it again with `tfds build {name} "
        f"--file_format=array_record --data_dir=DIR`")
  splits = list(builder.info.splits)
  if split not in splits:
    raise LotteryError(
        f"data.data_dir: TFDS dataset {name!r} in {where!r} has no {split!r} "
        f"split (it has {splits}); "
        f"{_tfds_prepare_hint(name, builder.data_dir)}")
  if not builder.info.splits[split].num_examples:
    raise LotteryError(
        f"data.data_dir: the {split!r} split of TFDS dataset {name!r} in "
        f"{where!r} is empty; {_tfds_prepare_hint(name, builder.data_dir)}")


def stack_images(images: list[np.ndarray], where: str) -> np.ndarray:
  """The images as one array, or a LotteryError if their shapes differ.

  Args:
    images: the examples of a split.
    where: the split, for the message ('imagenet2012 train').
  """
  first = images[0].shape if images else None
  other = next((x.shape for x in images if x.shape != first), None)
  if other is not None:
    raise LotteryError(
        f"data.crop: the images of {where} have different shapes ({first} "
        f"and {other}); set data.crop='inception' with data.source='stream' "
        f"to crop them to data.image_size squares")
  return np.stack(images)


def _read_tfds_split(name: str, split: str, data_dir: str | None):
  source, num_classes, where = tfds_source(name, split, data_dir)
  images, labels = [], []
  try:
    for ex in source:
      images.append(np.asarray(ex["image"]))
      labels.append(np.asarray(ex["label"]))
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A damaged record past the first (riegeli checks every block's hash).
    raise _unreadable(name, split, where, e, len(labels)) from None
  y = np.asarray(labels, np.int64)
  bad = (y < 0) | (y >= num_classes)
  if bad.any():
    raise LotteryError(
        f"data.data_dir: the {split!r} split of TFDS dataset {name!r} in "
        f"{where!r} holds label {int(y[bad][0])} (example "
        f"{int(np.argmax(bad))}), outside [0, {num_classes}); "
        f"{_tfds_prepare_hint(name, where)}")
  return (stack_images(images, f"{name} {split}"), y.astype(np.int32),
          num_classes)


def from_tfds(name: str, data_dir: str = "") -> Dataset:
  """An image-classification TFDS dataset read from a local `data_dir`.

  The dataset must have been prepared in array_record format (readable
  without TensorFlow, by random access). Images are scaled to [0, 1] and
  standardized per channel with the training set's mean and std.
  """
  data_dir = data_dir or None
  x_tr, y_tr, c = _read_tfds_split(name, "train", data_dir)
  x_te, y_te, _ = _read_tfds_split(name, TEST_SPLIT.get(name, "test"),
                                   data_dir)
  x_tr = x_tr.astype(np.float32) / 255.0
  x_te = x_te.astype(np.float32) / 255.0
  return standardize(Dataset(name, x_tr, y_tr, x_te, y_te, c))


def _from_images(path: str) -> Dataset:
  """A data.name='images' folder decoded into memory (data.crop='none'):
  images of one shape, scaled as `from_tfds` scales them."""
  from lottery import images  # pylint: disable=g-import-not-at-top
  splits = []
  for split in ("train", "test"):
    source = images.Folder(path, split)
    examples = [source[i] for i in range(len(source))]
    splits.append((stack_images([x for x, _ in examples], f"{path} {split}"
                                ).astype(np.float32) / 255.0,
                   np.asarray([y for _, y in examples], np.int32)))
  (x_tr, y_tr), (x_te, y_te) = splits
  return standardize(Dataset("images", x_tr, y_tr, x_te, y_te,
                             source.num_classes))


def validation_rows(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held-out) sorted row indices of `split_validation` for n
  training examples.

  Raises:
    LotteryError: if `size` leaves no training example.
  """
  if size >= n:
    raise LotteryError(f"data.validation_size: {size} leaves no training "
                       f"examples of {n}")
  perm = np.random.default_rng(0).permutation(n)
  return np.sort(perm[size:]), np.sort(perm[:size])


def split_validation(ds: Dataset, size: int
                     ) -> tuple[Dataset, np.ndarray, np.ndarray]:
  """Holds out `size` training examples as a validation set.

  The held-out examples are a fixed random subset (numpy seed 0, independent
  of the run's seeds), so every run of a dataset validates on the same ones.

  Returns:
    (the dataset without them, x_val, y_val).
  """
  keep, val = validation_rows(len(ds.y_train), size)
  return (dataclasses.replace(ds, x_train=ds.x_train[keep],
                              y_train=ds.y_train[keep]),
          ds.x_train[val], ds.y_train[val])


# Files changed this recently are hashed every time (see `_sha256_file`).
_RACY_NS = 2 * 10**9


def _memo(path: str, cache: str) -> tuple[pathlib.Path, os.stat_result]:
  """(Where `_sha256_file` remembers the digest of `path`, its stat)."""
  st = os.stat(path)
  key = hashlib.sha256(repr((os.path.abspath(path), st.st_dev, st.st_ino,
                             st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                            ).encode()).hexdigest()
  return cache_dir(cache) / "digests" / key, st


def _remembered(memo: pathlib.Path) -> str | None:
  with contextlib.suppress(OSError):
    text = memo.read_text()
    if re.fullmatch(r"sha256:[0-9a-f]{64}", text):
      return text
  return None


def _sha256_file(path: str, cache: str = "") -> str:
  """'sha256:<hex>' of a file's bytes, remembered in the cache directory.

  The digest is kept under a key of the file's path, device, inode, size and
  modification and change times (ns): any write to the file, or a new file
  at the path, changes the key (the stat rule of make, git and rsync; ctime
  cannot be set back by hand). A rerun on an unchanged 200 MB .npz thus
  reads it once, to load it, not twice. As in git's index, a file modified
  in the last seconds is not remembered: a second write within the clock's
  granularity (milliseconds) could keep every field of the key. An
  unwritable cache only costs the reading. `cache`: `data.cache_dir` (the
  default cache when empty).
  """
  memo, st = _memo(path, cache)
  return _remembered(memo) or _hash(path, memo, st)


def _hash(path: str, memo: pathlib.Path, st: os.stat_result) -> str:
  """`_sha256_file`'s reading: the digest of `path`, remembered at `memo`
  unless the file (of stat `st`) changed in the last seconds."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  digest = "sha256:" + h.hexdigest()
  if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
    return digest
  with contextlib.suppress(OSError):
    memo.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=memo.parent, suffix=".tmp")
    try:
      with os.fdopen(fd, "w") as f:
        f.write(digest)
      os.replace(tmp, memo)
    finally:
      with contextlib.suppress(OSError):
        os.unlink(tmp)  # Left only if the rename failed.
  return digest


def sha256_json(obj) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
  return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fingerprint(data) -> str:
  """A short string that changes when the dataset named by `data` changes.

  Cheap (no data is read for MNIST-1D and TFDS), so a run can record it and a
  resume can refuse changed data.

  Args:
    data: the `config.data` ConfigDict (name, path, data_dir).

  Returns:
    'sha256:<hex>' of: for 'npz', the file's bytes; for 'mnist1d', the
    generator call and the installed `mnist1d` version (the set is a pure
    function of both, and this does not depend on floating-point details of
    the machine that generated the cache); for TFDS, the prepared dataset's
    dataset_info.json and its files' names and sizes.

  Raises:
    LotteryError: as loading would: no .npz file, TFDS dataset not prepared,
      unknown data.name.
  """
  if data.name == "npz":
    path = data.path
    if not path or not os.path.isfile(path):
      _read_npz(path)  # Raises the loader's error for the path.
    return _sha256_file(path, data.get("cache_dir", ""))
  if data.name == "mnist1d":
    try:
      version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
      raise LotteryError("data.name: 'mnist1d' needs the mnist1d package "
                         "(pip install mnist1d)") from None
    return sha256_json({"dataset": "mnist1d", "mnist1d": version,
                         "generator": "make_dataset(get_dataset_args())"})
  if data.name == "images":
    from lottery import images  # pylint: disable=g-import-not-at-top
    return images.folder_fingerprint(data.path)
  if data.name in TFDS_NAMES:
    found = _tfds_files(data)
    if found is None:
      # Loading decides (it refuses, unless a test mocks the data source).
      return sha256_json({"dataset": data.name, "prepared": False})
    root, paths = found
    files = [(os.path.relpath(p, root), _size(p)) for p in paths]
    with open(os.path.join(root, "dataset_info.json"), "rb") as f:
      info = hashlib.sha256(f.read()).hexdigest()
    return sha256_json({"dataset": data.name, "files": sorted(files),
                         "dataset_info": info})
  raise LotteryError(f"data.name: unknown dataset {data.name!r} "
                     f"(known: {list(NAMES)})")


def _tfds_files(data) -> tuple[str, list[str]] | None:
  """(The prepared TFDS dataset's folder, every file in it), or None if it
  is not prepared."""
  with quiet_logs(_NoVariantWarnings()):
    builder = _tfds_builder(data.name, data.data_dir or None)
    prepared = builder.is_prepared()
  if not prepared:
    return None
  root = os.fspath(builder.data_dir)
  return root, [os.path.join(d, n) for d, _, names in os.walk(root)
                for n in names]


def _size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except OSError as e:
    raise LotteryError(f"data: cannot read {path!r} ({e.strerror or e})"
                       ) from None


# Digests of more bytes than this not yet remembered are announced.
_ANNOUNCE_BYTES = 1 << 30


def contents(data, *, known: str | None = None) -> str:
  """'sha256:<hex>' of the bytes of the dataset named by `data`.

  `fingerprint` reads no data for TFDS datasets and image folders (their
  files' names and sizes, their headers): a dataset rewritten in place at
  the same sizes (relabelled, say) keeps its fingerprint. This digest of
  the dataset's files' bytes (a TFDS dataset's folder, an image folder's
  split files and headers) does not; each file's digest is remembered in
  the cache (`_sha256_file`), so a dataset is read for it once on a
  machine (a warning says so above 1 GiB). A run records it in
  facts.json, and the stream cache is kept under it. For MNIST-1D and .npz
  files it is the fingerprint (the generator; the file's bytes).
  `known`: `fingerprint(data)`, where the caller has it already.

  Raises:
    LotteryError: as `fingerprint`; for a file that cannot be read.
  """
  the_fingerprint = lambda: fingerprint(data) if known is None else known
  if data.name in TFDS_NAMES:
    found = _tfds_files(data)
    if found is None:
      return the_fingerprint()
    root, paths = found
  elif data.name == "images":
    the_fingerprint()  # Refuses a folder without its splits' headers.
    root = data.path
    paths = [os.path.join(root, f"{split}.{ext}")
             for split in ("train", "test") for ext in ("array_record", "json")]
  else:
    return the_fingerprint()
  cache = data.get("cache_dir", "")
  try:
    stats = [(p, *_memo(p, cache)) for p in paths]
    digests = {p: _remembered(memo) for p, memo, _ in stats}
    new = sum(st.st_size for p, _, st in stats if digests[p] is None)
    if new > _ANNOUNCE_BYTES:
      logging.warning("data: reading %.1f GB of %s once for its digest "
                      "(data_contents in facts.json; remembered in %s)",
                      new / 1e9, root, cache_dir(cache) / "digests")
    files = {os.path.relpath(p, root): digests[p] or _hash(p, memo, st)
             for p, memo, st in stats}
  except OSError as e:
    raise LotteryError(f"data: cannot read {e.filename!r} for the dataset's "
                       f"digest ({e.strerror or e})") from None
  return sha256_json({"dataset": data.name, "files": files})


def load(data) -> Dataset:
  """The dataset named by the `config.data` ConfigDict."""
  if data.name == "mnist1d":
    return mnist1d(data.cache_dir)
  if data.name == "npz":
    return from_npz(data.path)
  if data.name in TFDS_NAMES:
    return from_tfds(data.name, data.data_dir)
  if data.name == "images":
    return _from_images(data.path)
  raise LotteryError(f"data.name: unknown dataset {data.name!r} "
                     f"(known: {list(NAMES)})")
