"""Datasets: MNIST-1D (generated offline), .npz files, TFDS from a data_dir."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lottery
from lottery import data
from lottery import imp
from lottery.errors import LotteryError


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


def test_tfds_not_prepared_is_a_clear_error(tmp_path):
  with pytest.raises(LotteryError) as e:
    data.from_tfds("mnist", str(tmp_path / "empty"))
  msg = str(e.value)
  assert msg.startswith("data.data_dir: TFDS dataset 'mnist' is not prepared")
  assert "--file_format=array_record" in msg


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
