"""Images decoded and cropped on the host as they are streamed (`data.crop`).

With `data.crop='inception'` (and `data.source='stream'`) the examples of a
dataset of images of any sizes (ImageNet) are not held in memory: each
compiled call's batches are read by index from the dataset's array_record
files, decoded and cropped to `data.image_size` squares on the host, in
grain's worker threads (`grain.ReadOptions`), while the previous call trains
(`stream.prefetch`). Training crops are the Inception-style random-resized
crops of the TF/TPU ResNet preprocessing that RigL's ImageNet code uses
(`random_resized_crop`, TF's `sample_distorted_bounding_box` drawn with
numpy) with a horizontal flip at probability 1/2;
evaluation takes the central crop of 224/256 of the shorter side
(`center_crop`), both resized bicubically, then scaled by ImageNet's
per-channel mean and standard deviation (`MEAN_RGB`, `STDDEV_RGB`).

The randomness of example j of step s of data seed d is
`np.random.default_rng([TAG, d, s, j])`: a batch is a pure function of
(data seed, step), whatever the number of threads, the split of steps into
calls or the step a run resumed at.

Two kinds of dataset are read:
  a TFDS image dataset (imagenet2012) prepared in array_record format: its
    `as_data_source` records, whose JPEG bytes TFDS decodes with PIL (or
    OpenCV) on the reading thread;
  data.name='images': a folder (`data.path`) of train.array_record and
    test.array_record written by `write` (one record per example: the int32
    label, little-endian, then the encoded image: JPEG, PNG, any format PIL
    reads), each with its header train.json / test.json.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pathlib
import struct
from collections.abc import Iterable

import numpy as np

from lottery import data as data_lib
from lottery import stream
from lottery.errors import LotteryError

FORMAT = "encoded_images_1"
# The TF/TPU ResNet preprocessing: random crops of 8% to 100% of the image's
# area (and at least 10% of it: min_object_covered) and aspect ratio 3/4 to
# 4/3, 10 tries, else the evaluation crop; evaluation crops image_size /
# (image_size + 32) of the shorter side.
AREA_RANGE = (0.08, 1.0)
MIN_COVERED = 0.1
RATIO_RANGE = (3 / 4, 4 / 3)
ATTEMPTS = 10
CROP_PADDING = 32
MEAN_RGB = np.asarray([0.485, 0.456, 0.406], np.float32) * 255
STDDEV_RGB = np.asarray([0.229, 0.224, 0.225], np.float32) * 255
# The first entry of every crop's seed: no other stream of the framework
# seeds numpy with it (the batch order's is [seed, epoch]).
TAG = 0x1AC0
# Decoding threads of grain's reader (grain's own default is 16).
THREADS = min(16, os.cpu_count() or 1)


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
  """A uint8 image (H, W, 3) encoded by PIL (for `write`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(out, fmt, quality=quality)
  return out.getvalue()


def write(folder: os.PathLike, split: str, encoded: Iterable[bytes],
          labels: Iterable[int], num_classes: int) -> pathlib.Path:
  """Writes a split of a data.name='images' dataset: <folder>/<split>.array_record
  and its header <split>.json, each atomically, the header last.

  Args:
    folder: the dataset's folder (`data.path`).
    split: 'train' or 'test'.
    encoded: each example's encoded image (e.g. `encode(x)`; JPEG bytes).
    labels: each example's class in [0, num_classes).
    num_classes: the classes of the dataset (the same in both headers).

  Returns:
    The array_record file's path.

  Raises:
    LotteryError: for a label outside [0, num_classes) (nothing is
      written in place of the split).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(folder) / f"{split}.array_record"
  path.parent.mkdir(parents=True, exist_ok=True)
  count = 0

  def records(tmp):
    nonlocal count
    writer = array_record_module.ArrayRecordWriter(tmp, stream.WRITER_OPTIONS)
    try:
      for image, label in zip(encoded, labels, strict=True):
        if not 0 <= int(label) < num_classes:
          raise LotteryError(f"labels: example {count} has label {label}, "
                             f"outside [0, {num_classes})")
        writer.write(struct.pack("<i", int(label)) + bytes(image))
        count += 1
    finally:
      writer.close()

  stream.replace_atomic(path, records)
  header = {"format": FORMAT, "count": count, "num_classes": int(num_classes),
            "file_bytes": path.stat().st_size}

  def text(tmp):
    with open(tmp, "w") as f:
      json.dump(header, f)

  stream.replace_atomic(path.with_suffix(".json"), text)
  return path


def _path_error(why: str) -> LotteryError:
  return LotteryError(f"data.path: {why}")


class Folder:
  """A split of a data.name='images' folder: item i -> (uint8 image (H, W,
  3), label); `num_classes`; `len`."""

  def __init__(self, folder: str, split: str):
    self.path = pathlib.Path(folder) / f"{split}.array_record"
    header_path = self.path.with_suffix(".json")
    if not header_path.exists():
      raise _path_error(f"{os.fspath(folder)!r} holds no {split} split "
                        f"({header_path.name} missing); write it with "
                        f"lottery.images.write")
    try:
      with open(header_path) as f:
        h = json.load(f)
      if h["format"] != FORMAT:
        raise ValueError(f"format {h['format']!r}")
      self.count, self.num_classes = int(h["count"]), int(h["num_classes"])
      size = int(h["file_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _path_error(f"cannot read {os.fspath(header_path)!r} "
                        f"({stream.cause(e)})") from None
    actual = self.path.stat().st_size if self.path.exists() else None
    if actual != size:
      raise _path_error(f"{os.fspath(self.path)!r} has {actual} bytes, its "
                        f"header says {size}; write the split again")
    import grain  # pylint: disable=g-import-not-at-top
    self._source = grain.sources.ArrayRecordDataSource(os.fspath(self.path))
    if len(self._source) != self.count:
      raise _path_error(f"{os.fspath(self.path)!r} has {len(self._source)} "
                        f"records, its header says {self.count}")

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    """Example i, decoded.

    Raises:
      LotteryError: naming data.path, for a label outside [0, num_classes)
        or bytes that PIL cannot decode (the record and the file named).
    """
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
    record = self._source[int(i)]
    (label,) = struct.unpack_from("<i", record)
    if not 0 <= label < self.num_classes:
      raise _path_error(f"record {int(i)} of {os.fspath(self.path)!r} has "
                        f"label {label}, outside [0, {self.num_classes}); "
                        f"write the split again")
    try:
      with Image.open(io.BytesIO(record[4:])) as image:
        return np.asarray(image.convert("RGB")), label
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError too.
      why = ("no image format PIL knows"
             if isinstance(e, UnidentifiedImageError) else stream.cause(e))
      raise _path_error(f"record {int(i)} of {os.fspath(self.path)!r} is not "
                        f"an image PIL can decode ({why}); write the split "
                        f"again") from None


class _Tfds:
  """A split of a TFDS image dataset: item i -> (image, label)."""

  def __init__(self, name: str, split: str, data_dir: str):
    self._source, self.num_classes, root = data_lib.tfds_source(
        name, split, data_dir)
    self.path = pathlib.Path(root) / split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    """Example i, decoded.

    Raises:
      LotteryError: naming data.data_dir, for a label outside [0,
        num_classes) or a record that cannot be read.
    """
    try:
      ex = self._source[int(i)]
    except MemoryError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise LotteryError(f"data.data_dir: cannot read record {int(i)} of "
                         f"{os.fspath(self.path)!r} ({stream.cause(e)}); "
                         f"prepare the dataset again") from None
    label = int(ex["label"])
    if not 0 <= label < self.num_classes:
      raise LotteryError(f"data.data_dir: record {int(i)} of "
                         f"{os.fspath(self.path)!r} has label {label}, "
                         f"outside [0, {self.num_classes}); prepare the "
                         f"dataset again")
    return np.asarray(ex["image"]), label


def _box_resize(image: np.ndarray, box: tuple[int, int, int, int],
                size: int) -> np.ndarray:
  """The (x0, y0, x1, y1) box of a uint8 image, resized bicubically to a
  (size, size, 3) uint8 square."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image)
  if pil.mode != "RGB":
    pil = pil.convert("RGB")
  return np.asarray(pil.resize((size, size), Image.BICUBIC, box=box))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The evaluation crop: the central square of size / (size + 32) of the
  shorter side (224 of 256), resized to (size, size, 3), uint8."""
  h, w = image.shape[:2]
  side = max(1, int(size / (size + CROP_PADDING) * min(h, w)))
  y0, x0 = (h - side + 1) // 2, (w - side + 1) // 2
  return _box_resize(image, (x0, y0, x0 + side, y0 + side), size)


def _crop_box(h: int, w: int, rng: np.random.Generator
              ) -> tuple[int, int, int, int] | None:
  """One draw of TF's `sample_distorted_bounding_box` (its C++
  GenerateRandomCrop) over the whole image: the aspect ratio (width /
  height) uniform in RATIO_RANGE, the height uniform between the heights of
  the smallest and largest area of AREA_RANGE at that ratio (capped to fit),
  the width from the ratio; a box outside the area range or under
  MIN_COVERED of the image fails. (x0, y0, x1, y1), or None."""
  min_area, max_area = (a * h * w for a in AREA_RANGE)
  ratio = rng.uniform(*RATIO_RANGE)
  height = int(np.rint(np.sqrt(min_area / ratio)))
  max_height = int(np.rint(np.sqrt(max_area / ratio)))
  if np.rint(max_height * ratio) > w:
    max_height = int((w + 0.5 - 1e-7) / ratio)
  max_height = min(max_height, h)
  height = min(height, max_height)
  if height < max_height:
    height += int(rng.integers(0, max_height - height + 1))
  width = int(np.rint(height * ratio))
  area = width * height
  if area < min_area:
    height += 1
    width = int(np.rint(height * ratio))
    area = width * height
  if not (max(min_area, MIN_COVERED * h * w) <= area <= max_area and
          0 < width <= w and 0 < height <= h):
    return None
  y0 = int(rng.integers(0, h - height + 1))
  x0 = int(rng.integers(0, w - width + 1))
  return x0, y0, x0 + width, y0 + height


def random_resized_crop(image: np.ndarray, size: int,
                        rng: np.random.Generator) -> np.ndarray:
  """The Inception-style training crop of the TF/TPU ResNet preprocessing
  (`distorted_bounding_box_crop`: min_object_covered 0.1, aspect ratio
  3/4..4/3, area 8%..100%, 10 attempts): the first of ATTEMPTS draws of
  `_crop_box` that succeeds, else `center_crop`. Resized bicubically to
  (size, size, 3), uint8; not flipped."""
  h, w = image.shape[:2]
  for _ in range(ATTEMPTS):
    box = _crop_box(h, w, rng)
    if box is not None:
      return _box_resize(image, box, size)
  return center_crop(image, size)


def normalize(crops: np.ndarray) -> np.ndarray:
  """uint8 crops (..., 3) as float32, scaled by ImageNet's channel mean and
  standard deviation: (x - mean) / std, each in float32."""
  out = np.subtract(crops, MEAN_RGB, dtype=np.float32)
  out /= STDDEV_RGB  # In place: no temporary of the float32 crops.
  return out


class Images:
  """A split of images read by index, decoded and cropped to squares.

  The `stream.Records` protocol of the loop: `read(idx)` of an int array of
  any shape returns (x, y) of shapes idx.shape + (size, size, 3) float32 and
  idx.shape int32, evaluation crops; `read(idx, keys)` with keys of shape
  idx.shape + (3,) ([data seed, step, slot] of each example) returns
  training crops, flipped at random. `random` tells the loop to pass keys.
  """

  random = True

  def __init__(self, source, size: int):
    self._source = source
    self.path = source.path
    self.size = size
    self.rows: np.ndarray | None = None
    self.dtype = stream.record_dtype(np.float32, self.example_shape, np.int32)

  def __len__(self) -> int:
    return len(self._source) if self.rows is None else len(self.rows)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return (self.size, self.size, 3)

  def subset(self, rows: np.ndarray) -> Images:
    """The view of examples rows[0], rows[1], ... (of this view)."""
    rows = np.asarray(rows, np.int64)
    view = copy.copy(self)
    view.rows = rows if self.rows is None else self.rows[rows]
    return view

  def _example(self, item) -> tuple[np.ndarray, int]:
    row, key = item
    image, label = self._source[row]
    if image.ndim == 2:
      image = image[:, :, None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    # Normalized here, in the reader's threads (numpy releases the GIL).
    if key is None:
      return normalize(center_crop(image, self.size)), label
    rng = np.random.default_rng([TAG, *key])
    crop = random_resized_crop(image, self.size, rng)
    return normalize(crop[:, ::-1] if rng.random() < 0.5 else crop), label

  def read(self, idx: np.ndarray, keys: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The examples of indices `idx` (any shape): (x, y); training crops
    keyed by `keys` (idx.shape + (3,)) if given, else evaluation crops."""
    import grain  # pylint: disable=g-import-not-at-top
    idx = np.asarray(idx)
    flat = idx.reshape(-1)
    if self.rows is not None:
      flat = self.rows[flat]
    flat_keys = (None if keys is None else
                 np.asarray(keys, np.int64).reshape(-1, 3).tolist())
    items = [(int(r), None if flat_keys is None else flat_keys[i])
             for i, r in enumerate(flat)]
    x = np.empty((len(items),) + self.example_shape, np.float32)
    y = np.empty(len(items), np.int32)
    if items:
      # In order; grain's threads decode ahead (PIL releases the GIL).
      ds = grain.MapDataset.source(items).map(self._example)
      options = grain.ReadOptions(num_threads=THREADS,
                                  prefetch_buffer_size=2 * THREADS)
      for i, (crop, label) in enumerate(ds.to_iter_dataset(options)):
        x[i], y[i] = crop, label
    return x.reshape(idx.shape + self.example_shape), y.reshape(idx.shape)


def _sources(data) -> tuple[object, object]:
  """The (train, test) sources of `data` (a TFDS name or 'images')."""
  if data.name == "images":
    return Folder(data.path, "train"), Folder(data.path, "test")
  test = data_lib.TEST_SPLIT.get(data.name, "test")
  return (_Tfds(data.name, "train", data.data_dir),
          _Tfds(data.name, test, data.data_dir))


def open_splits(data) -> tuple[data_lib.Dataset, dict[str, Images]]:
  """The dataset of `data` (a `config.data` with crop != 'none') as
  {'train': Images, 'test': Images}, and its `Dataset`, whose arrays hold
  one example of each split (evaluation crops: the shapes, and an input to
  initialize a model with).

  Raises:
    LotteryError: naming data.path or data.data_dir for a dataset that is
      missing or damaged.
  """
  train, test = _sources(data)
  out = {"train": Images(train, data.image_size),
         "test": Images(test, data.image_size)}
  for split, src in (("train", train), ("test", test)):
    if not len(src):
      raise LotteryError(f"data.name: the {split} split of {data.name!r} is "
                         f"empty")
  return stream.sample(data.name, out, train.num_classes), out


def folder_fingerprint(path: str) -> str:
  """'sha256:<hex>' of a data.name='images' folder's headers (count, classes
  and file size of each split)."""
  headers = {}
  for split in ("train", "test"):
    header = pathlib.Path(path) / f"{split}.json"
    try:
      headers[split] = header.read_text()
    except OSError:
      Folder(path, split)  # Raises the loader's error for the folder.
  return data_lib.sha256_json({"dataset": "images", "headers": headers})
