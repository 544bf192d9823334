"""data.crop='inception': images decoded and cropped on the host as they are
streamed; step s's batch is a function of (data seed, s) only, and a run
interrupted and resumed gives the same tickets bit for bit."""

import os
import threading

import numpy as np
import pytest

import lottery
from lottery import images
from lottery import loop

from conftest import run_until_finished
from test_stream import _Interrupt
from test_stream import _tickets_equal
from test_stream import interrupt_after_saves
from test_stream import quiet

# Mixed shapes, landscape and portrait, as ImageNet's.
SHAPES = ((24, 32, 3), (32, 24, 3), (20, 20, 3))


def write_jpegs(folder, train: int, test: int, classes: int = 10,
                shapes=SHAPES, seed: int = 0):
  """A data.name='images' folder of random JPEGs of `shapes` (in turn)."""
  rng = np.random.default_rng(seed)
  for split, n in (("train", train), ("test", test)):
    encoded = [images.encode(rng.integers(0, 256, shapes[i % len(shapes)],
                                          dtype=np.uint8)) for i in range(n)]
    images.write(folder, split, encoded, rng.integers(0, classes, n), classes)
  return str(folder)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
  return write_jpegs(tmp_path_factory.mktemp("jpegs") / "ds", 96, 24)


def tiny_images(path, cache, **overrides):
  c = lottery.base_config()
  c.data.update(name="images", path=path, source="stream", crop="inception",
                image_size=16, cache_dir=str(cache))
  c.model.name = "mlp_tiny"
  c.training.update(steps=12, batch_size=8, optimizer="adam",
                    learning_rate=1e-2, eval_every=4, checkpoint_every=4)
  c.pruning.update(fraction=0.5, rounds=1, rewind_step=4)
  c.controls = ()
  for key, value in overrides.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


def test_center_crop_is_224_of_256_of_the_shorter_side():
  image = np.random.default_rng(0).integers(0, 256, (256, 300, 3), np.uint8)
  # A box of the output's size: the pixels themselves.
  assert np.array_equal(images.center_crop(image, 224),
                        image[16:240, 38:262])
  assert images.center_crop(image, 32).shape == (32, 32, 3)


def test_random_resized_crop_is_keyed_and_falls_back_to_the_center():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
  a = images.random_resized_crop(image, 16, np.random.default_rng([1, 2]))
  b = images.random_resized_crop(image, 16, np.random.default_rng([1, 2]))
  c = images.random_resized_crop(image, 16, np.random.default_rng([1, 3]))
  assert a.shape == (16, 16, 3) and np.array_equal(a, b)
  assert not np.array_equal(a, c)
  # No box of 8%+ of a one-pixel-high image fits: the evaluation crop.
  thin = image[:1]
  assert np.array_equal(
      images.random_resized_crop(thin, 8, np.random.default_rng(0)),
      images.center_crop(thin, 8))


def test_training_reads_depend_on_keys_only(jpegs, monkeypatch):
  train = images.Images(images.Folder(jpegs, "train"), 16)
  idx = np.arange(12).reshape(2, 6)
  keys = loop.example_keys(idx.shape, 7, (3,))
  assert keys[1, 4].tolist() == [3, 8, 4]
  x, y = train.read(idx, keys)
  assert x.shape == (2, 6, 16, 16, 3) and x.dtype == np.float32
  assert y.shape == (2, 6) and y.dtype == np.int32
  monkeypatch.setattr(images, "THREADS", 1)
  x1, y1 = train.read(idx[1:], keys[1:])  # Another split, one thread.
  assert np.array_equal(x1, x[1:]) and np.array_equal(y1, y[1:])
  other, _ = train.read(idx, loop.example_keys(idx.shape, 9, (3,)))
  assert not np.array_equal(other, x)  # Another step: other crops.
  # Evaluation crops are fixed; a subset reads its rows.
  e, _ = train.read(idx)
  sub, _ = train.subset(np.arange(6, 12)).read(np.arange(6))
  assert np.array_equal(sub, e[1])


def test_interrupted_cropped_run_resumes_bit_exact(jpegs, tmp_path,
                                                   monkeypatch):
  cfg = tiny_images(jpegs, tmp_path / "cache",
                    **{"training.label_smoothing": 0.1})
  lottery.run(cfg, tmp_path / "ref", log=quiet)
  interrupt_after_saves(monkeypatch, (1, 3))
  monkeypatch.setattr(images, "THREADS", 2)  # Not the reference's count.
  assert run_until_finished(cfg, tmp_path / "run", _Interrupt) == 2
  _tickets_equal(tmp_path / "ref", tmp_path / "run", 1, kinds=("ticket",))
  assert not [t for t in threading.enumerate()
              if t.name == "lottery-prefetch"]


def test_mixed_shapes_without_a_crop_are_refused_before_writing(jpegs,
                                                                 tmp_path):
  cfg = tiny_images(jpegs, tmp_path / "cache",
                    **{"data.crop": "none", "data.source": "memory",
                       "data.image_size": 224})
  with pytest.raises(lottery.LotteryError) as e:
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  msg = str(e.value)
  assert msg.startswith("data.crop: the images of ") and "\n" not in msg
  assert "different shapes" in msg
  assert not (tmp_path / "wd").exists()


def test_one_shaped_images_load_in_memory(tmp_path):
  path = write_jpegs(tmp_path / "ds", 8, 4, shapes=((12, 12, 3),))
  c = tiny_images(path, tmp_path / "cache")
  c.data.update(crop="none", source="memory")
  ds = lottery.data.load(c.data)
  assert ds.x_train.shape == (8, 12, 12, 3) and ds.num_classes == 10


def test_a_folders_digest_is_its_splits_bytes(tmp_path):
  path = write_jpegs(tmp_path / "ds", 8, 4, shapes=((12, 12, 3),))
  c = tiny_images(path, tmp_path / "cache")
  before = lottery.data.contents(c.data)
  assert before != lottery.data.fingerprint(c.data)
  (tmp_path / "ds" / "README.txt").write_text("the source JPEGs are in ...")
  assert lottery.data.contents(c.data) == before  # Not a split's file.
  records = tmp_path / "ds" / "train.array_record"
  data = bytearray(records.read_bytes())
  data[-1] ^= 1  # The same size and header: another image.
  records.write_bytes(bytes(data))
  assert lottery.data.contents(c.data) != before


@pytest.mark.parametrize("field, value, start", [
    ("data.source", "memory", "data.crop: decodes and crops batches on the "
     "host as they are streamed; set data.source='stream'"),
    ("method", "pai", "data.crop: is for methods ['imp', 'sparse']"),
    ("data.image_size", 0, "data.image_size: must be an integer in [1, "),
    ("data.path", "", "data.path: set it to the folder of "),
    ("pruning.level_barrier", True, "data.crop: the error barriers of IMP's "
     "stability_copy control and pruning.level_barrier evaluate the training "
     "and test arrays"),
    ("controls", ("stability_copy",), "data.crop: the error barriers of "),
])
def test_crop_settings_are_refused_in_one_line(jpegs, tmp_path, field, value,
                                               start):
  c = tiny_images(jpegs, tmp_path / "cache")
  if field in ("method", "controls"):
    c[field] = value
  else:
    c[field.split(".")[0]][field.split(".")[1]] = value
  with pytest.raises(lottery.LotteryError) as e:
    lottery.config.validate(c)
  assert str(e.value).startswith(start) and "\n" not in str(e.value)


def test_a_missing_split_is_named(tmp_path):
  os.makedirs(tmp_path / "empty")
  with pytest.raises(lottery.LotteryError, match="^data.path: .* holds no "
                     "train split"):
    images.Folder(str(tmp_path / "empty"), "train")


def test_labels_outside_the_classes_are_refused_when_written(tmp_path):
  encoded = [images.encode(np.zeros((4, 4, 3), np.uint8))] * 3
  with pytest.raises(lottery.LotteryError, match=(
      r"^labels: example 2 has label 10, outside \[0, 10\)$")):
    images.write(tmp_path, "train", encoded, [0, 9, 10], 10)
  assert not (tmp_path / "train.array_record").exists()


def test_undecodable_or_mislabelled_records_are_named(tmp_path):
  good = images.encode(np.zeros((4, 4, 3), np.uint8))
  images.write(tmp_path, "train", [good, b"notajpeg", good], [1, 2, 3], 10)
  split = images.Folder(str(tmp_path), "train")
  assert split[0][1] == 1 and split[0][0].shape == (4, 4, 3)
  path = str(tmp_path / "train.array_record")
  with pytest.raises(lottery.LotteryError, match=(
      f"^data.path: record 1 of '{path}' is not an image PIL can decode "
      r"\(no image format PIL knows\); write the split again$")):
    split[1]  # pylint: disable=pointless-statement
  # A header that claims fewer classes than the records use (a folder
  # written by other code).
  split.num_classes = 3
  with pytest.raises(lottery.LotteryError, match=(
      f"^data.path: record 2 of '{path}' has label 3, outside \\[0, 3\\); "
      "write the split again$")):
    split[2]  # pylint: disable=pointless-statement


def test_crops_benchmark_reports_images_per_second():
  from experiments import benchmark_crops  # pylint: disable=g-import-not-at-top
  threads = images.THREADS
  out = benchmark_crops.measure(4, 1)
  assert out["crops_train_images_per_s"] > 0
  assert out["crops_eval_images_per_s"] > 0
  assert out["crops_threads"] == images.THREADS and out["crops_jpeg_bytes"] > 0
  assert images.THREADS == threads  # Set back after the 1- and 2-thread reads.
  # One thread's rate is one core's; the cores to feed 3,000 images/s.
  one = out["crops_train_threads_1_images_per_s"]
  assert out["crops_train_threads_2_images_per_s"] > 0
  assert out["crops_per_core_images_per_s"] == one
  assert -0.01 < out["crops_cores_for_accelerator"] - 3000 / one < 1.01


def test_mock_imagenet_in_memory_is_refused_and_streams_cropped(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = lottery.base_config()
  c.data.update(name="imagenet2012", data_dir=str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=6):  # Random shapes.
    with pytest.raises(lottery.LotteryError, match="^data.crop: the images "
                       "of imagenet2012 train have different shapes"):
      lottery.data.load(c.data)
    c.data.update(source="stream", crop="inception", image_size=8)
    ds, splits = images.open_splits(c.data)
    x, y = splits["test"].read(np.arange(6))
  assert x.shape == (6, 8, 8, 3) and ds.num_classes == 1000
  assert ds.x_train.shape == (1, 8, 8, 3) and len(splits["train"]) == 6
