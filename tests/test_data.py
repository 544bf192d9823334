"""Datasets: MNIST-1D (generated offline), .npz files (every bad one refused
in one line), TFDS from a data_dir, standardization, fingerprints."""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
import zipfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lottery
from lottery import data
from lottery import images
from lottery import imp
from lottery.errors import LotteryError

from conftest import config_from_dict
from conftest import make_npz


def test_mnist1d_standard_split_generated_and_cached(tmp_path):
  ds = data.mnist1d(str(tmp_path))
  assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
  assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
  assert set(np.unique(ds.y_train).tolist()) == set(range(10))
  assert (tmp_path / "mnist1d_standard.npz").exists()
  again = data.mnist1d(str(tmp_path))  # From the cache: identical.
  assert np.array_equal(again.x_train, ds.x_train)


def test_npz_loader_and_its_errors(tmp_path, npz_path):
  ds = data.from_npz(npz_path)
  assert ds.x_train.shape == (256, 8) and ds.num_classes == 3
  with pytest.raises(LotteryError, match="^data.path: no such file"):
    data.from_npz(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "partial.npz", x_train=np.zeros((4, 2)))
  with pytest.raises(LotteryError, match=r"^data.path: .* lacks arrays"):
    data.from_npz(str(tmp_path / "partial.npz"))
  np.savez(tmp_path / "ragged.npz", x_train=np.zeros((4, 2)),
           y_train=np.zeros(3, int), x_test=np.zeros((2, 2)),
           y_test=np.zeros(2, int))
  with pytest.raises(LotteryError, match="^data.path: x_train has 4 rows"):
    data.from_npz(str(tmp_path / "ragged.npz"))
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(LotteryError, match="^data.path: cannot read"):
    data.from_npz(str(tmp_path / "junk.npz"))


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
    ("cifar10", (32, 32, 3), 10)])
def test_tfds_datasets_through_mock_data(name, shape, classes, tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.from_tfds(name, str(tmp_path))
  assert ds.x_train.shape == (12,) + shape and ds.x_test.shape == (12,) + shape
  assert ds.num_classes == classes and ds.y_train.dtype == np.int32
  # Standardized per channel with the training set's statistics.
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


@pytest.mark.slow
def test_experiment_on_mock_tfds_end_to_end(tiny_config, tmp_path):
  cfg = tiny_config(**{"data.name": "cifar10", "data.data_dir":
                       str(tmp_path / "tfds"), "model.name": "conv2",
                       "training.steps": 4, "training.batch_size": 8,
                       "training.eval_every": 2, "pruning.rounds": 1,
                       "pruning.layer_fractions": "conv.*/kernel=0.1"})
  with tfds.testing.mock_data(num_examples=16):
    summary = lottery.run(cfg, tmp_path / "wd", log=lambda _: None)
  assert len(summary["rounds"]) == 2
  t = lottery.load_ticket(tmp_path / "wd", 1)
  assert t.mask["conv1"]["kernel"].shape == (3, 3, 3, 64)
  # conv at 10%, fc at 50%, out at 50%.
  dens = t.metrics["layer_densities"]
  assert dens["conv1/kernel"] == pytest.approx(0.9, abs=1 / 1728)
  assert dens["fc1/kernel"] == 0.5


def test_tfds_not_prepared_is_a_clear_error(tmp_path, monkeypatch):
  # And leaves nothing in the temporary directory (TFDS makes an empty one
  # for metadata of an unprepared dataset; data.py removes it).
  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  with pytest.raises(LotteryError) as e:
    data.from_tfds("mnist", str(tmp_path / "empty"))
  assert not list(scratch.iterdir())
  assert tempfile.tempdir == str(scratch)
  msg = str(e.value)
  assert msg.startswith("data.data_dir: TFDS dataset 'mnist' is not prepared")
  assert "--file_format=array_record" in msg
  assert "downloads/manual" not in msg
  # ImageNet's files are downloaded by hand before `tfds build`.
  with pytest.raises(LotteryError) as e:
    data.from_tfds("imagenet2012", str(tmp_path / "empty"))
  msg = str(e.value)
  assert msg.startswith("data.data_dir: TFDS dataset 'imagenet2012' is not "
                        "prepared") and "\n" not in msg
  assert msg.endswith("; 'imagenet2012' first needs its files downloaded by "
                      "hand into DIR/downloads/manual/ (TFDS's instructions "
                      "for imagenet2012; docs/data.md)")


def _prepared_info(data_dir, name, file_format, splits, examples=10):
  """A TFDS dataset folder as `tfds build` leaves it, without its records:
  dataset_info.json (the format and splits) and features.json."""
  builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
  info = json.loads(builder.info.as_json)
  info["splits"] = [{"name": s, "numBytes": "100",
                     "shardLengths": [str(examples)],
                     "filepathTemplate":
                         "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}
                    for s in splits]
  os.makedirs(builder.data_dir)
  (pathlib.Path(builder.data_dir) / "dataset_info.json").write_text(
      json.dumps(info))
  builder.info.features.save_config(builder.data_dir)
  return os.fspath(builder.data_dir)


def _refusal_of_prepared(tiny_config, tmp_path, file_format, splits,
                         examples=10):
  """(the prepared folder, the one-line error) of a run on an MNIST folder
  of `_prepared_info`, after checking that nothing was written."""
  where = _prepared_info(tmp_path / "tfds", "mnist", file_format, splits,
                         examples)
  cfg = tiny_config(**{"data.name": "mnist", "data.data_dir":
                       str(tmp_path / "tfds"), "model.name": "lenet_300_100"})
  with pytest.raises(LotteryError) as e:
    lottery.run(cfg, tmp_path / "wd", log=lambda _: None)
  msg = str(e.value)
  assert "\n" not in msg
  assert not (tmp_path / "wd").exists()
  return where, msg


@pytest.mark.parametrize("file_format, splits, field, cause", [
    ("tfrecord", ("train", "test"), "data.data_dir",
     "is prepared as tfrecord, which cannot be read by index; convert it with "
     "`pip install tensorflow tensorflow-datasets && tfds convert_format "
     "--dataset_version_dir={where} --out_file_format=array_record` or "
     "prepare it again with `tfds build mnist --file_format=array_record "
     "--data_dir=DIR`"),
    ("array_record", ("test",), "data.data_dir",
     "has no 'train' split (it has ['test']); prepare it on a machine"),
], ids=["tfrecord", "no-train-split"])
def test_unreadable_tfds_dataset_is_refused_before_writing(
    tiny_config, tmp_path, file_format, splits, field, cause):
  where, msg = _refusal_of_prepared(tiny_config, tmp_path, file_format,
                                    splits)
  assert msg.startswith(f"{field}: TFDS dataset 'mnist' in {where!r} "
                        + cause.format(where=where)), msg


def test_an_empty_tfds_split_is_refused_before_writing(tiny_config,
                                                       tmp_path):
  where, msg = _refusal_of_prepared(tiny_config, tmp_path, "array_record",
                                    ("train", "test"), examples=0)
  assert msg.startswith(f"data.data_dir: the 'train' split of TFDS dataset "
                        f"'mnist' in {where!r} is empty; prepare it"), msg


def test_tfds_dataset_without_its_record_files_is_refused_before_writing(
    tiny_config, tmp_path):
  where, msg = _refusal_of_prepared(tiny_config, tmp_path, "array_record",
                                    ("train", "test"))
  assert msg.startswith(f"data.data_dir: cannot read the 'train' records of "
                        f"TFDS dataset 'mnist' in {where!r} ("), msg
  assert "mnist-train.array_record-00000-of-00001" in msg
  assert "--file_format=array_record" in msg


class _Records:
  """A TFDS data source of images whose example `bad` raises, as riegeli
  does for a damaged block."""

  def __init__(self, labels, bad=None):
    self.labels, self.bad = labels, bad

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    if i == self.bad:
      raise RuntimeError("Corrupted Riegeli/records file: block header hash "
                         "mismatch\nmore lines")
    if i >= len(self.labels):
      raise IndexError(i)
    return {"image": np.full((2, 2, 1), i, np.uint8),
            "label": self.labels[i]}


@pytest.mark.parametrize("labels, bad, why", [
    ([0, 1, 2], 1, "cannot read example 1 of the 'train' records of TFDS "
     "dataset 'mnist' in '/data/mnist/3.0.1' (Corrupted Riegeli/records "
     "file: block header hash mismatch); prepare it"),
    ([0, 12, 2], None, "the 'train' split of TFDS dataset 'mnist' in "
     "'/data/mnist/3.0.1' holds label 12 (example 1), outside [0, 10); "
     "prepare it"),
    ([0, -1, 2], None, "the 'train' split of TFDS dataset 'mnist' in "
     "'/data/mnist/3.0.1' holds label -1 (example 1), outside [0, 10); "
     "prepare it")], ids=["damaged", "above", "negative"])
def test_a_damaged_record_or_a_bad_tfds_label_is_one_line(monkeypatch, labels,
                                                          bad, why):
  monkeypatch.setattr(data, "tfds_source", lambda name, split, data_dir: (
      _Records(labels, bad), 10, "/data/mnist/3.0.1"))
  with pytest.raises(LotteryError) as e:
    data.from_tfds("mnist", "/data")
  assert str(e.value).startswith("data.data_dir: " + why), str(e.value)
  assert "\n" not in str(e.value)
  # Read a record at a time (host-side crops): the same refusals.
  split = images._Tfds("mnist", "train", "/data")  # pylint: disable=protected-access
  assert split[0][1] == 0
  with pytest.raises(LotteryError, match=r"^data.data_dir: (cannot read "
                     r"record 1 of '/data/mnist/3.0.1/train' \(RuntimeError|"
                     r"record 1 of '/data/mnist/3.0.1/train' has label)"):
    split[1]  # pylint: disable=pointless-statement


def test_batch_size_above_the_training_set_after_validation(tiny_config,
                                                            tmp_path):
  # 256 training examples, 250 of them set aside for validation.
  cfg = tiny_config(**{"data.validation_size": 250,
                       "training.batch_size": 32})
  with pytest.raises(LotteryError, match=r"^training.batch_size: 32 exceeds "
                     r"the 6 training examples$"):
    lottery.run(cfg, tmp_path / "wd", log=lambda _: None)
  assert not (tmp_path / "wd").exists()


def test_build_rejects_unknown_dataset(tiny_config):
  with pytest.raises(LotteryError, match="^data.name: "):
    imp.build(tiny_config(**{"data.name": "svhn"}))


def test_validation_split_is_fixed_and_disjoint(npz_path):
  ds = data.from_npz(npz_path)
  a, xv, yv = data.split_validation(ds, 50)
  b, xv2, _ = data.split_validation(ds, 50)
  assert len(a.y_train) == 206 and len(yv) == 50
  assert np.array_equal(xv, xv2) and np.array_equal(a.x_train, b.x_train)
  rows = {r.tobytes() for r in ds.x_train}
  assert {r.tobytes() for r in xv} | {r.tobytes() for r in a.x_train} == rows
  assert not {r.tobytes() for r in xv} & {r.tobytes() for r in a.x_train}
  with pytest.raises(LotteryError, match="^data.validation_size: "):
    data.split_validation(ds, 256)


def _save(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _arrays(n=8, dim=4, **changes):
  a = dict(x_train=np.ones((n, dim), np.float32),
           y_train=np.arange(n) % 3, x_test=np.ones((4, dim), np.float32),
           y_test=np.arange(4) % 3)
  a.update(changes)
  return a


def _truncated(tmp_path):
  good = make_npz(tmp_path / "good.npz")
  blob = pathlib.Path(good).read_bytes()
  (tmp_path / "cut.npz").write_bytes(blob[:len(blob) // 2])
  return str(tmp_path / "cut.npz")


def _bad_crc(tmp_path):
  path = tmp_path / "crc.npz"
  np.savez(path, **_arrays())
  blob = bytearray(path.read_bytes())
  i = blob.index(b"\x93NUMPY", blob.index(b"x_test.npy"))  # Stored, not
  blob[i + 140] ^= 0xFF  # compressed: flip a byte of x_test's data.
  path.write_bytes(bytes(blob))
  return str(path)


def _zip_of_text(tmp_path):
  with zipfile.ZipFile(tmp_path / "text.npz", "w") as z:
    z.writestr("x_train.npy", "hello")
    for k in ("y_train", "x_test", "y_test"):
      z.writestr(k + ".npy", "hello")
  return str(tmp_path / "text.npz")


def _npy(tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((4, 2)))
  return str(tmp_path / "x.npy")


# (id, tmp_path -> the data.path to load, what the message must contain).
BAD_NPZ = [
    ("missing key", lambda t: _save(t / "a.npz", x_train=np.zeros((4, 2))),
     "lacks arrays ['y_train', 'x_test', 'y_test']"),
    ("directory", lambda t: str(t), "is a directory, not an .npz file"),
    ("no file", lambda t: str(t / "nope.npz"), "no such file"),
    (".npy", _npy, "is a single .npy array"),
    ("text file", lambda t: (t / "j.npz").write_text("x,y\n1,2") and
     str(t / "j.npz"), "not a zip archive"),
    ("truncated zip", _truncated, "the file is damaged (BadZipFile"),
    ("bad CRC", _bad_crc, "the file is damaged (BadZipFile: Bad CRC-32"),
    ("zip of non-npy", _zip_of_text, "is not a .npy array"),
    ("object x", lambda t: _save(t / "o.npz", **_arrays(
        x_train=np.array([[1, "a"]] * 8, dtype=object))),
     "holds Python objects (dtype object)"),
    ("string x", lambda t: _save(t / "s.npz", **_arrays(
        x_train=np.full((8, 4), "1.0"))), "x_train must hold real numbers "
     "(got dtype <U3"),
    ("complex x", lambda t: _save(t / "c.npz", **_arrays(
        x_train=np.ones((8, 4), np.complex64))), "x_train must hold real "
     "numbers (got dtype complex64"),
    ("NaN in x_train", lambda t: _save(t / "n.npz", **_arrays(
        x_train=np.where(np.eye(8, 4) > 0, np.nan, 1.0))),
     "x_train holds non-finite values (got 4 NaN and 0 inf of 32"),
    ("inf in x_test", lambda t: _save(t / "i.npz", **_arrays(
        x_test=np.full((4, 4), -np.inf))), "x_test holds non-finite values"),
    ("beyond float32", lambda t: _save(t / "b.npz", **_arrays(
        x_train=np.full((8, 4), 1e300))), "x_train holds values beyond "
     "float32's range"),
    ("empty train", lambda t: _save(t / "e.npz", **_arrays(
        x_train=np.zeros((0, 4)), y_train=np.zeros(0, int))),
     "x_train is empty"),
    ("empty test", lambda t: _save(t / "e2.npz", **_arrays(
        x_test=np.zeros((0, 4)), y_test=np.zeros(0, int))), "x_test is empty"),
    ("no features", lambda t: _save(t / "f.npz", **_arrays(
        x_train=np.zeros((8, 0)))), "x_train is empty"),
    ("1-D x", lambda t: _save(t / "d.npz", **_arrays(x_train=np.zeros(8))),
     "x_train must have shape (N, L), (N, L, C) or (N, H, W, C)"),
    ("5-D x", lambda t: _save(t / "d5.npz", **_arrays(
        x_train=np.zeros((8, 1, 1, 1, 4)))), "x_train must have shape"),
    ("test shape differs", lambda t: _save(t / "sh.npz", **_arrays(
        x_test=np.ones((4, 5)))), "x_test has examples of shape (5,) but "
     "x_train (4,)"),
    ("rows differ", lambda t: _save(t / "r.npz", **_arrays(
        y_train=np.zeros(7, int))), "x_train has 8 rows but y_train has "
     "shape (7,)"),
    ("2-D labels", lambda t: _save(t / "y2.npz", **_arrays(
        y_test=np.zeros((4, 3), int))), "x_test has 4 rows but y_test has "
     "shape (4, 3)"),
    ("negative label", lambda t: _save(t / "neg.npz", **_arrays(
        y_train=np.array([0, 1, -1, 2, 0, 1, 2, 0]))),
     "y_train must hold labels in [0, 100000) (got -1"),
    ("huge label", lambda t: _save(t / "big.npz", **_arrays(
        y_test=np.array([0, 1, 2, 10**6]))), "y_test must hold labels in "
     "[0, 100000) (got 1000000"),
    ("fractional label", lambda t: _save(t / "fr.npz", **_arrays(
        y_train=np.arange(8) / 2)), "y_train must hold integer class labels "
     "(got 0.5 among float64"),
    ("NaN label", lambda t: _save(t / "nl.npz", **_arrays(
        y_test=np.array([0.0, np.nan, 1.0, 2.0]))),
     "y_test must hold integer class labels"),
    ("string label", lambda t: _save(t / "sl.npz", **_arrays(
        y_train=np.array(list("abcabcab")))), "y_train must hold integer "
     "class labels (got dtype <U1"),
]


@pytest.mark.parametrize("make,cause", [(f, c) for _, f, c in BAD_NPZ],
                         ids=[f"npz:{i}" for i, _, _ in BAD_NPZ])
def test_bad_npz_refused_naming_the_field(npz_path, tmp_path, make, cause):
  """Each bad file (built now in tmp_path) is refused by `lottery.build` in
  one line that starts with data.path and says what is wrong."""
  changes = {"data.path": make(tmp_path)}
  with pytest.raises(lottery.LotteryError) as e:
    lottery.build(config_from_dict(npz_path, changes))
  msg = str(e.value)
  assert msg.startswith("data.path: "), msg
  assert cause in msg and "\n" not in msg, msg


def test_accepted_npz_forms(tmp_path):
  # Integral float labels and integer, bool or float64 inputs are accepted.
  path = _save(tmp_path / "ok.npz", **_arrays(
      x_train=np.arange(32, dtype=np.int16).reshape(8, 4),
      y_train=(np.arange(8) % 3).astype(np.float64),
      x_test=np.ones((4, 4), bool), y_test=np.array([0, 4, 1, 1], np.uint8),
      extra=np.zeros(3)))
  ds = data.from_npz(path)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
  assert ds.x_train[1].tolist() == [4.0, 5.0, 6.0, 7.0]
  assert ds.num_classes == 5  # Largest label + 1; class 3 never appears.
  images = _save(tmp_path / "img.npz", **_arrays(
      x_train=np.zeros((8, 5, 5, 3)), x_test=np.zeros((4, 5, 5, 3))))
  assert data.from_npz(images).x_test.shape == (4, 5, 5, 3)


def test_standardize_per_channel_with_train_statistics():
  x_tr = np.array([[[0., 10.], [2., 30.]], [[4., 10.], [6., 30.]]],
                  np.float32)  # (N=2, L=2, C=2): channel means 3 and 20.
  ds = data.Dataset("t", x_tr, np.zeros(2, np.int32),
                        np.full((1, 2, 2), 3.0, np.float32),
                        np.zeros(1, np.int32), 1)
  s = data.standardize(ds)
  std0 = np.sqrt(5.0) + 1e-6  # Channel 0: values 0, 2, 4, 6.
  np.testing.assert_allclose(s.x_train[..., 0],
                             (x_tr[..., 0] - 3.0) / std0, rtol=1e-6)
  np.testing.assert_allclose(s.x_train[..., 1], [[-1, 1], [-1, 1]],
                             rtol=1e-6)
  np.testing.assert_allclose(s.x_test[0, :, 1], (3.0 - 20.0) / (10 + 1e-6),
                             rtol=1e-6)
  assert s.x_test[0, 0, 0] == 0.0 and s.x_train.dtype == np.float32
  flat = dataclasses.replace(ds, x_train=x_tr.reshape(2, 4),
                             x_test=np.zeros((1, 4), np.float32))
  s2 = data.standardize(flat)  # (N, L): one channel over everything.
  assert abs(float(s2.x_train.mean())) < 1e-6
  np.testing.assert_allclose(s2.x_train.std(), 1.0, rtol=1e-5)


def test_npz_digest_is_remembered_until_the_file_changes(tmp_path,
                                                        monkeypatch):
  path = pathlib.Path(make_npz(tmp_path / "d.npz"))
  digest = lambda: "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
  cfg = ml_collections.ConfigDict({"name": "npz", "path": str(path),
                                   "data_dir": ""})
  memos = lambda: list((data.cache_dir() / "digests").glob("*"))
  before = set(memos())
  # Just written: hashed, not remembered (a second write in the same clock
  # tick could leave its stat unchanged).
  assert data.fingerprint(cfg) == digest() and set(memos()) == before
  # Remembered once old enough (here: at once, on a clock 10 s ahead; the
  # file dated 10 s back so that the rewrite below is surely in another
  # clock tick).
  now = time.time_ns
  past = now() - 10**10
  os.utime(path, ns=(past, past))
  monkeypatch.setattr(time, "time_ns", lambda: now() + 10**10)
  assert data.fingerprint(cfg) == digest()
  (memo,) = set(memos()) - before
  assert memo.read_text() == digest()
  # The memo is what answers (a fake digest shows it)...
  memo.write_text("sha256:" + "0" * 64)
  assert data.fingerprint(cfg) == "sha256:" + "0" * 64
  # ...until the file changes: same path, same size, other bytes.
  size = path.stat().st_size
  make_npz(path, seed=1)
  assert path.stat().st_size == size
  assert data.fingerprint(cfg) == digest() != "sha256:" + "0" * 64


def test_fingerprints(tmp_path, npz_path):
  cfg = lambda **kw: ml_collections.ConfigDict(
      {"name": "npz", "path": "", "data_dir": "", **kw})
  start = time.perf_counter()
  fp = data.fingerprint(cfg(path=npz_path))
  m1 = data.fingerprint(cfg(name="mnist1d"))
  elapsed = time.perf_counter() - start
  assert fp == "sha256:" + hashlib.sha256(
      pathlib.Path(npz_path).read_bytes()).hexdigest()
  assert m1.startswith("sha256:") and len(m1) == 71
  assert m1 == data.fingerprint(cfg(name="mnist1d"))
  assert elapsed < 0.2
  other = make_npz(tmp_path / "other.npz", seed=1)
  assert data.fingerprint(cfg(path=other)) != fp
  with pytest.raises(lottery.LotteryError, match="^data.path: no such file"):
    data.fingerprint(cfg(path=str(tmp_path / "nope.npz")))
  # An unprepared TFDS dataset has a fingerprint of its own; loading it is
  # what refuses (so tests can mock the data source).
  unprepared = data.fingerprint(cfg(name="mnist",
                                        data_dir=str(tmp_path / "none")))
  assert unprepared.startswith("sha256:") and unprepared != fp
  with pytest.raises(lottery.LotteryError,
                     match="^data.data_dir: TFDS dataset 'mnist' is not "
                     "prepared"):
    data.load(cfg(name="mnist", data_dir=str(tmp_path / "none")))
  # A prepared TFDS dir: dataset_info.json and the files' names and sizes.
  version_dir = tmp_path / "tfds" / "mnist" / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text(
      '{"name": "mnist", "version": "3.0.1"}')
  shard = version_dir / "mnist-train.array_record-00000-of-00001"
  shard.write_bytes(b"abc")
  tf_cfg = cfg(name="mnist", data_dir=str(tmp_path / "tfds"))
  a, bytes_a = data.fingerprint(tf_cfg), data.contents(tf_cfg)
  shard.write_bytes(b"xyz")  # Same size: the same fingerprint (cheap)...
  assert data.fingerprint(tf_cfg) == a
  # ...but not the same contents: the digest of every file's bytes.
  files = {"dataset_info.json": (version_dir / "dataset_info.json"
                                 ).read_bytes(), shard.name: b"xyz"}
  assert data.contents(tf_cfg) == data.sha256_json({
      "dataset": "mnist", "files": {
          k: "sha256:" + hashlib.sha256(v).hexdigest()
          for k, v in files.items()}}) != bytes_a
  shard.write_bytes(b"abcd")
  assert data.fingerprint(tf_cfg) != a
  # Another data_dir holding the same bytes: the same contents.
  copy = tmp_path / "copy" / "mnist" / "3.0.1"
  shutil.copytree(version_dir, copy)
  assert data.contents(cfg(name="mnist", data_dir=str(tmp_path / "copy"))
                       ) == data.contents(tf_cfg)
  # A file that cannot be read (a dangling link): one line.
  os.symlink(tmp_path / "gone", version_dir / "extra")
  for fn in (data.fingerprint, data.contents):
    with pytest.raises(lottery.LotteryError, match=r"^data: cannot read "
                       r"'.*extra' .*No such file or directory"):
      fn(tf_cfg)
  # MNIST-1D and .npz: their fingerprint.
  assert data.contents(cfg(path=npz_path)) == fp
  assert data.contents(cfg(name="mnist1d")) == m1


def test_damaged_mnist1d_cache_is_regenerated(tmp_path, monkeypatch):
  from mnist1d import data as m1d  # pylint: disable=g-import-not-at-top
  good = data.mnist1d(str(tmp_path))
  cache = tmp_path / "mnist1d_standard.npz"
  cache.write_bytes(b"garbage")
  again = data.mnist1d(str(tmp_path))
  assert np.array_equal(again.x_train, good.x_train)
  assert np.array_equal(again.y_test, good.y_test)
  assert data.mnist1d(str(tmp_path)).x_train.shape == (4000, 40)
  # A cache with the wrong contents, and one that cannot be written: the
  # generator (here, its recorded output) runs again and nothing fails.
  real = {"x": good.x_train, "y": good.y_train, "x_test": good.x_test,
          "y_test": good.y_test}
  calls = []
  monkeypatch.setattr(m1d, "make_dataset",
                      lambda args: calls.append(1) or real)
  np.savez(cache, x_train=np.zeros((3, 40)))
  assert np.array_equal(data.mnist1d(str(tmp_path)).x_test, good.x_test)
  cache.unlink()
  cache.mkdir()  # A directory where the file should be.
  assert np.array_equal(data.mnist1d(str(tmp_path)).x_train, good.x_train)
  assert len(calls) == 2 and cache.is_dir()
  assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_standard.npz"]
