"""Datasets as in-memory arrays: MNIST-1D (offline default), TFDS, .npz.

Every loader returns a `Dataset` of numpy arrays: float32 inputs and int32
labels. Nothing is downloaded: MNIST-1D is generated locally by the `mnist1d`
package (`make_dataset`, the standard 4000/1000 split, seed 42) and cached;
TFDS datasets are read from a local `data_dir` prepared beforehand.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

import numpy as np

from lottery.errors import LotteryError

TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
NAMES = ("mnist1d", "npz") + TFDS_NAMES


@dataclasses.dataclass(frozen=True)
class Dataset:
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
  with os.fdopen(fd, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def mnist1d(cache: str = "") -> Dataset:
  """The standard MNIST-1D set (4000 train / 1000 test, length 40, 10 classes).

  Generated with `mnist1d.data.make_dataset(get_dataset_args())` (never
  `get_dataset`, which downloads) and cached as an .npz.
  """
  path = cache_dir(cache) / "mnist1d_standard.npz"
  if not path.exists():
    from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
    d = make_dataset(get_dataset_args())
    _save_npz_atomic(path, x_train=d["x"], y_train=d["y"], x_test=d["x_test"],
                     y_test=d["y_test"])
  with np.load(path) as f:
    return Dataset("mnist1d", f["x_train"].astype(np.float32),
                   f["y_train"].astype(np.int32),
                   f["x_test"].astype(np.float32),
                   f["y_test"].astype(np.int32), 10)


def from_npz(path: str) -> Dataset:
  """A user's arrays: an .npz with x_train, y_train, x_test, y_test.

  Labels must be integers 0..C-1; C is taken from the largest label.
  """
  if not path:
    raise LotteryError("data.path: set it to an .npz file for data.name='npz'")
  if not os.path.isfile(path):
    raise LotteryError(f"data.path: no such file {path!r}")
  try:
    f = np.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise LotteryError(f"data.path: cannot read {path!r} as .npz ({e})"
                       ) from None
  with f:
    keys = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in keys if k not in f.files]
    if missing:
      raise LotteryError(f"data.path: {path!r} lacks arrays {missing} "
                         f"(has {f.files})")
    xs = {k: f[k] for k in keys}
  for split in ("train", "test"):
    x, y = xs["x_" + split], xs["y_" + split]
    if len(x) != len(y) or y.ndim != 1:
      raise LotteryError(f"data.path: x_{split} has {len(x)} rows but "
                         f"y_{split} has shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
      raise LotteryError(f"data.path: y_{split} must hold integer labels >= 0")
  num_classes = int(max(xs["y_train"].max(), xs["y_test"].max())) + 1
  return Dataset(os.path.basename(path), *(
      xs[k].astype(np.float32 if k[0] == "x" else np.int32) for k in keys),
                 num_classes)


def _tfds_prepare_hint(name: str, data_dir: str) -> str:
  return (f"prepare it on a machine with internet access with `pip install "
          f"tensorflow tensorflow-datasets && tfds build {name} "
          f"--file_format=array_record --data_dir=DIR`, copy DIR here and set "
          f"--config.data.data_dir=DIR (looked in {data_dir!r})")


def _read_tfds_split(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise LotteryError(f"data.data_dir: TFDS dataset {name!r} is not "
                         f"prepared; {_tfds_prepare_hint(name, builder.data_dir)}"
                         ) from None
    first = str(e).splitlines()[0]
    raise LotteryError(f"data.data_dir: cannot read TFDS dataset {name!r} "
                       f"({first}); re-prepare it in array_record format: "
                       f"{_tfds_prepare_hint(name, builder.data_dir)}"
                       ) from None
  images, labels = [], []
  for ex in source:
    images.append(np.asarray(ex["image"]))
    labels.append(np.asarray(ex["label"]))
  num_classes = builder.info.features["label"].num_classes
  return np.stack(images), np.asarray(labels, np.int32), num_classes


def from_tfds(name: str, data_dir: str = "") -> Dataset:
  """An image-classification TFDS dataset read from a local `data_dir`.

  The dataset must have been prepared in array_record format (readable
  without TensorFlow, by random access). Images are scaled to [0, 1] and
  standardized per channel with the training set's mean and std.
  """
  data_dir = data_dir or None
  x_tr, y_tr, c = _read_tfds_split(name, "train", data_dir)
  x_te, y_te, _ = _read_tfds_split(name, "test", data_dir)
  x_tr = x_tr.astype(np.float32) / 255.0
  x_te = x_te.astype(np.float32) / 255.0
  axes = tuple(range(x_tr.ndim - 1))
  mean, std = x_tr.mean(axes), x_tr.std(axes) + 1e-6
  return Dataset(name, (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, c)


def split_validation(ds: Dataset, size: int
                     ) -> tuple[Dataset, np.ndarray, np.ndarray]:
  """Holds out `size` training examples as a validation set.

  The held-out examples are a fixed random subset (numpy seed 0, independent
  of the run's seeds), so every run of a dataset validates on the same ones.

  Returns:
    (the dataset without them, x_val, y_val).
  """
  if size >= len(ds.y_train):
    raise LotteryError(f"data.validation_size: {size} leaves no training "
                       f"examples of {len(ds.y_train)}")
  perm = np.random.default_rng(0).permutation(len(ds.y_train))
  val, keep = np.sort(perm[:size]), np.sort(perm[size:])
  return (dataclasses.replace(ds, x_train=ds.x_train[keep],
                              y_train=ds.y_train[keep]),
          ds.x_train[val], ds.y_train[val])


def load(data) -> Dataset:
  """The dataset named by the `config.data` ConfigDict."""
  if data.name == "mnist1d":
    return mnist1d(data.cache_dir)
  if data.name == "npz":
    return from_npz(data.path)
  if data.name in TFDS_NAMES:
    return from_tfds(data.name, data.data_dir)
  raise LotteryError(f"data.name: unknown dataset {data.name!r} "
                     f"(known: {list(NAMES)})")
