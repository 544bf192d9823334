"""Hardening: every bad config value and every bad dataset refused in one line.

One table of bad inputs (config values, and .npz files built in tmp_path), each
refused by `lottery.build` (validate, then load the data) with a LotteryError
naming the field; plus the schema's coverage, the CLI, fingerprints and
standardization.
"""

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import ml_collections
import numpy as np
import pytest

import lottery
from lottery import config as config_lib
from lottery import data as data_lib

from conftest import make_npz

ROOT = pathlib.Path(__file__).resolve().parents[1]
INF, NAN = float("inf"), float("nan")


def _config(npz_path, changes):
  """A tiny npz config built by hand from a dict, as a library user might.

  Built from a plain dict so that ConfigDict's own type checks (which refuse
  some of these when set on an existing field) do not stand in for ours.
  """
  d = lottery.base_config().to_dict()
  d["data"].update(name="npz", path=npz_path)
  d["model"]["name"] = "mlp_tiny"
  d["training"].update(steps=20, batch_size=16, eval_every=5,
                       checkpoint_every=10)
  for key, value in changes.items():
    node = d
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return ml_collections.ConfigDict(d)


# (changed field, value, the message's start).
BAD_CONFIGS = [
    ("training.lr", 1, "config: no field 'training.lr' (did you mean "
     "'training.learning_rate'?)"),
    ("pruning.fracton", 0.5, "config: no field 'pruning.fracton' (did you "
     "mean 'pruning.fraction'?)"),
    ("trainin", {"steps": 5}, "config: no field 'trainin' (did you mean "
     "'training'?)"),
    ("training", 5, "training: must be a group of fields (got 5)"),
    ("training.steps", "100", "training.steps: must be an integer in "
     "[1, 1000000000] (got '100')"),
    ("training.steps", 10**12, "training.steps: "),
    ("training.steps", 2.0, "training.steps: "),
    ("training.batch_size", True, "training.batch_size: "),
    ("training.batch_size", None, "training.batch_size: "),
    ("training.learning_rate", INF, "training.learning_rate: must be in "
     "(0, 1000] (got inf)"),
    ("training.learning_rate", NAN, "training.learning_rate: "),
    ("training.learning_rate", 1e4, "training.learning_rate: "),
    ("training.learning_rate", "0.1", "training.learning_rate: must be a "
     "number in (0, 1000] (got '0.1')"),
    ("training.learning_rate", -0.1, "training.learning_rate: "),
    ("training.weight_decay", 1e300, "training.weight_decay: must be in "
     "[0, 1000) (got 1e+300)"),
    ("training.weight_decay", -1e-4, "training.weight_decay: "),
    ("training.momentum", -0.5, "training.momentum: "),
    ("training.momentum", NAN, "training.momentum: "),
    ("training.nesterov", "yes", "training.nesterov: must be True or False"),
    ("training.lr_decay", 0.0, "training.lr_decay: "),
    ("training.lr_decay", INF, "training.lr_decay: "),
    ("training.lr_boundaries", ("5",), "training.lr_boundaries: "),
    ("training.lr_boundaries", 5, "training.lr_boundaries: "),
    ("training.warmup_steps", 20, "training.warmup_steps: must be below "
     "training.steps=20"),
    ("training.label_smoothing", 1.0, "training.label_smoothing: must be in "
     "[0, 1) (got 1.0)"),
    ("training.label_smoothing", -0.1, "training.label_smoothing: "),
    ("training.eval_every", 0, "training.eval_every: "),
    ("training.checkpoint_every", -1, "training.checkpoint_every: "),
    ("seeds.init", 2**70, "seeds.init: must be an integer in [0, 2147483647]"),
    ("seeds.data", 2**31, "seeds.data: "),
    ("seeds.control", 1.5, "seeds.control: "),
    ("data.name", 7, "data.name: "),
    ("data.path", "", "data.path: set it to an .npz file"),
    ("data.data_dir", None, "data.data_dir: must be a string"),
    ("data.cache_dir", 3, "data.cache_dir: "),
    ("data.on_device", 1, "data.on_device: must be True or False"),
    ("data.validation_size", 10**10, "data.validation_size: "),
    ("model.name", None, "model.name: "),
    ("pruning.fraction", NAN, "pruning.fraction: must be in (0, 1) (got nan)"),
    ("pruning.fraction", "0.2", "pruning.fraction: must be a number in "
     "(0, 1)"),
    ("pruning.rounds", 1.0, "pruning.rounds: "),
    ("pruning.prunable", (), "pruning.prunable: "),
    ("pruning.prunable", ".*kernel", "pruning.prunable: "),
    ("pruning.prunable", (3,), "pruning.prunable: "),
    ("pruning.layer_fractions", ("out/kernel=0.1",),
     "pruning.layer_fractions: must be a string"),
    ("pruning.reset", None, "pruning.reset: "),
    ("pruning.rewind_step", -1, "pruning.rewind_step: "),
    ("controls", "reinit", "controls: must be a tuple, e.g. ('reinit',) "
     "(got 'reinit')"),
    ("controls", ("reinit", 1), "controls: "),
    ("controls", ("reinit", "reinit"), "controls: must not repeat"),
    ("controls_every", False, "controls_every: "),
    ("pai.methods", (), "pai.methods: must name at least one score"),
    ("pai.methods", "snip", "pai.methods: must be a tuple"),
    ("pai.methods", ("snip", "sinp"), "pai.methods: must be one of"),
    ("pai.methods", ("snip", "snip"), "pai.methods: must not repeat"),
    ("pai.densities", (), "pai.densities: must hold at least one"),
    ("pai.densities", (0.1, 1.0), "pai.densities: must be in (0, 1)"),
    ("pai.densities", (0.0,), "pai.densities: must be in (0, 1)"),
    ("pai.densities", (NAN,), "pai.densities: "),
    ("pai.densities", ("0.1",), "pai.densities: must be a number"),
    ("pai.checks", ("shuffle", "flip"), "pai.checks: must be one of"),
    ("pai.checks", ("invert", "invert"), "pai.checks: must not repeat"),
    ("pai.iterations", 0, "pai.iterations: must be an integer in [1, "),
    ("pai.method_iterations", "synflow", "pai.method_iterations: must be "
     "'method=iterations,...'"),
    ("pai.method_iterations", "synflow=-3", "pai.method_iterations: "),
    ("pai.method_iterations", "synflo=10", "pai.method_iterations: must be "
     "one of"),
    ("pai.method_iterations", "snip=0", "pai.method_iterations: iterations "
     "of 'snip' must be in"),
    ("pai.scope", "local", "pai.scope: must be one of"),
    ("pai.batch_size", 0, "pai.batch_size: "),
    ("pai.dense", 1, "pai.dense: must be True or False"),
    # Sparse training (lottery.sparse).
    ("sparse.methods", ("rigl", "snip"), "sparse.methods: must be one of "
     "['gmp', 'rigl', 'set', 'static'] (got 'snip')"),
    ("sparse.methods", (), "sparse.methods: must be a non-empty tuple"),
    ("sparse.methods", ("rigl", "rigl"), "sparse.methods: must not repeat"),
    ("sparse.densities", (0.1, 1.0), "sparse.densities: must be in (0, 1) "
     "(got 1.0)"),
    ("sparse.densities", "0.1", "sparse.densities: must be a non-empty "
     "tuple"),
    ("sparse.densities", (NAN,), "sparse.densities: "),
    ("sparse.densities", (0.1, 0.1), "sparse.densities: must not repeat"),
    ("sparse.distribution", ("erk", "er"), "sparse.distribution: must be "
     "one of ['erk', 'uniform'] (got 'er')"),
    ("sparse.update_every", 0, "sparse.update_every: must be an integer in "
     "[1, "),
    ("sparse.drop_fraction", 1.0, "sparse.drop_fraction: must be in (0, 1) "
     "(got 1.0)"),
    ("sparse.end_fraction", 0.0, "sparse.end_fraction: must be in (0, 1] "
     "(got 0.0)"),
    ("sparse.begin_step", -1, "sparse.begin_step: "),
    ("sparse.end_step", 2.5, "sparse.end_step: "),
]


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


@pytest.mark.parametrize(
    "changes,start",
    [({k: v}, s) for k, v, s in BAD_CONFIGS] +
    [({"data.path": f}, ("data.path: ", cause)) for _, f, cause in BAD_NPZ],
    ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS] +
    [f"npz:{i}" for i, _, _ in BAD_NPZ])
def test_bad_input_refused_naming_the_field(npz_path, tmp_path, changes,
                                            start):
  if isinstance(start, tuple):  # A data file: built now, cause checked.
    start, cause = start
    changes = {"data.path": changes["data.path"](tmp_path)}
  else:
    cause = ""
  with pytest.raises(lottery.LotteryError) as e:
    lottery.build(_config(npz_path, changes))
  msg = str(e.value)
  assert msg.startswith(start), msg
  assert cause in msg and "\n" not in msg, msg


def test_table_is_long_enough():
  assert len(BAD_CONFIGS) + len(BAD_NPZ) >= 40


def test_every_schema_field_has_a_rule():
  fields = config_lib.schema_fields()
  assert "training.learning_rate" in fields and "controls" in fields
  assert not set(fields) - set(config_lib.RULES), (
      "fields of base_config() without a rule in lottery.config.RULES")


def test_added_fields_have_rules_before_the_schema_has_them():
  # The lead adds these to base_config(); their rules are ready.
  rules = config_lib.RULES
  values = {"data.augment": "none", "model.depth": 0, "model.width": 0,
            "training.loop": "scan"}
  for name, ok in values.items():
    rules[name](name, ok, {})
  for name, bad in [("data.augment", "mixup"), ("model.depth", -1),
                    ("model.width", 2.0), ("training.loop", "vmap")]:
    with pytest.raises(lottery.LotteryError, match=f"^{name}: "):
      rules[name](name, bad, {})


def test_good_config_and_rules_dont_mutate(npz_path):
  cfg = _config(npz_path, {"training.learning_rate": 1,
                           "training.lr_boundaries": [5, 10],
                           "controls": ["reinit"]})
  before = cfg.to_json()
  config_lib.validate(cfg)
  assert cfg.to_json() == before


def test_missing_field_named(npz_path):
  d = _config(npz_path, {}).to_dict()
  del d["seeds"]["init"]
  with pytest.raises(lottery.LotteryError, match=r"^seeds.init: missing"):
    config_lib.validate(ml_collections.ConfigDict(d))


def test_accepted_npz_forms(tmp_path):
  # Integral float labels and integer, bool or float64 inputs are accepted.
  path = _save(tmp_path / "ok.npz", **_arrays(
      x_train=np.arange(32, dtype=np.int16).reshape(8, 4),
      y_train=(np.arange(8) % 3).astype(np.float64),
      x_test=np.ones((4, 4), bool), y_test=np.array([0, 4, 1, 1], np.uint8),
      extra=np.zeros(3)))
  ds = data_lib.from_npz(path)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.y_train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
  assert ds.x_train[1].tolist() == [4.0, 5.0, 6.0, 7.0]
  assert ds.num_classes == 5  # Largest label + 1; class 3 never appears.
  images = _save(tmp_path / "img.npz", **_arrays(
      x_train=np.zeros((8, 5, 5, 3)), x_test=np.zeros((4, 5, 5, 3))))
  assert data_lib.from_npz(images).x_test.shape == (4, 5, 5, 3)


def test_standardize_per_channel_with_train_statistics():
  x_tr = np.array([[[0., 10.], [2., 30.]], [[4., 10.], [6., 30.]]],
                  np.float32)  # (N=2, L=2, C=2): channel means 3 and 20.
  ds = data_lib.Dataset("t", x_tr, np.zeros(2, np.int32),
                        np.full((1, 2, 2), 3.0, np.float32),
                        np.zeros(1, np.int32), 1)
  s = data_lib.standardize(ds)
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
  s2 = data_lib.standardize(flat)  # (N, L): one channel over everything.
  assert abs(float(s2.x_train.mean())) < 1e-6
  np.testing.assert_allclose(s2.x_train.std(), 1.0, rtol=1e-5)


def test_npz_digest_is_remembered_until_the_file_changes(tmp_path,
                                                        monkeypatch):
  path = pathlib.Path(make_npz(tmp_path / "d.npz"))
  digest = lambda: "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
  cfg = ml_collections.ConfigDict({"name": "npz", "path": str(path),
                                   "data_dir": ""})
  memos = lambda: list((data_lib.cache_dir() / "digests").glob("*"))
  before = set(memos())
  # Just written: hashed, not remembered (a second write in the same clock
  # tick could leave its stat unchanged).
  assert data_lib.fingerprint(cfg) == digest() and set(memos()) == before
  # Remembered once old enough (here: at once, the file dated 10 s back so
  # that the rewrite below is surely in another clock tick).
  monkeypatch.setattr(data_lib, "_RACY_NS", 0)
  past = time.time_ns() - 10**10
  os.utime(path, ns=(past, past))
  assert data_lib.fingerprint(cfg) == digest()
  (memo,) = set(memos()) - before
  assert memo.read_text() == digest()
  # The memo is what answers (a fake digest shows it)...
  memo.write_text("sha256:" + "0" * 64)
  assert data_lib.fingerprint(cfg) == "sha256:" + "0" * 64
  # ...until the file changes: same path, same size, other bytes.
  size = path.stat().st_size
  make_npz(path, seed=1)
  assert path.stat().st_size == size
  assert data_lib.fingerprint(cfg) == digest() != "sha256:" + "0" * 64


def test_fingerprints(tmp_path, npz_path):
  cfg = lambda **kw: ml_collections.ConfigDict(
      {"name": "npz", "path": "", "data_dir": "", **kw})
  start = time.perf_counter()
  fp = data_lib.fingerprint(cfg(path=npz_path))
  m1 = data_lib.fingerprint(cfg(name="mnist1d"))
  elapsed = time.perf_counter() - start
  assert fp == "sha256:" + hashlib.sha256(
      pathlib.Path(npz_path).read_bytes()).hexdigest()
  assert m1.startswith("sha256:") and len(m1) == 71
  assert m1 == data_lib.fingerprint(cfg(name="mnist1d"))
  assert elapsed < 0.2
  other = make_npz(tmp_path / "other.npz", seed=1)
  assert data_lib.fingerprint(cfg(path=other)) != fp
  with pytest.raises(lottery.LotteryError, match="^data.path: no such file"):
    data_lib.fingerprint(cfg(path=str(tmp_path / "nope.npz")))
  # An unprepared TFDS dataset has a fingerprint of its own; loading it is
  # what refuses (so tests can mock the data source).
  unprepared = data_lib.fingerprint(cfg(name="mnist",
                                        data_dir=str(tmp_path / "none")))
  assert unprepared.startswith("sha256:") and unprepared != fp
  with pytest.raises(lottery.LotteryError,
                     match="^data.data_dir: TFDS dataset 'mnist' is not "
                     "prepared"):
    data_lib.load(cfg(name="mnist", data_dir=str(tmp_path / "none")))
  # A prepared TFDS dir: dataset_info.json and the files' names and sizes.
  version_dir = tmp_path / "tfds" / "mnist" / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text(
      '{"name": "mnist", "version": "3.0.1"}')
  shard = version_dir / "mnist-train.array_record-00000-of-00001"
  shard.write_bytes(b"abc")
  tf_cfg = cfg(name="mnist", data_dir=str(tmp_path / "tfds"))
  a = data_lib.fingerprint(tf_cfg)
  shard.write_bytes(b"xyz")  # Same size: the same fingerprint (cheap).
  assert data_lib.fingerprint(tf_cfg) == a
  shard.write_bytes(b"abcd")
  assert data_lib.fingerprint(tf_cfg) != a


def test_damaged_mnist1d_cache_is_regenerated(tmp_path, monkeypatch):
  from mnist1d import data as m1d  # pylint: disable=g-import-not-at-top
  good = data_lib.mnist1d(str(tmp_path))
  cache = tmp_path / "mnist1d_standard.npz"
  cache.write_bytes(b"garbage")
  again = data_lib.mnist1d(str(tmp_path))
  assert np.array_equal(again.x_train, good.x_train)
  assert np.array_equal(again.y_test, good.y_test)
  assert data_lib.mnist1d(str(tmp_path)).x_train.shape == (4000, 40)
  # A cache with the wrong contents, and one that cannot be written: the
  # generator (here, its recorded output) runs again and nothing fails.
  real = {"x": good.x_train, "y": good.y_train, "x_test": good.x_test,
          "y_test": good.y_test}
  calls = []
  monkeypatch.setattr(m1d, "make_dataset",
                      lambda args: calls.append(1) or real)
  np.savez(cache, x_train=np.zeros((3, 40)))
  assert np.array_equal(data_lib.mnist1d(str(tmp_path)).x_test, good.x_test)
  cache.unlink()
  cache.mkdir()  # A directory where the file should be.
  assert np.array_equal(data_lib.mnist1d(str(tmp_path)).x_train, good.x_train)
  assert len(calls) == 2 and cache.is_dir()
  assert [p.name for p in tmp_path.iterdir()] == ["mnist1d_standard.npz"]


def _run_cli(*args):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.imp", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


@pytest.mark.parametrize("flag,start", [
    ("--config.training.learning_rate=inf", "error: training.learning_rate"),
    ("--config.training.weight_decay=1e300", "error: training.weight_decay"),
    ("--config.seeds.init=-3", "error: seeds.init"),
])
def test_cli_refuses_in_one_line(tmp_path, flag, start):
  res = _run_cli("--config=configs/mnist1d.py:quick",
                 f"--workdir={tmp_path / 'wd'}", flag)
  assert res.returncode == 1, res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(start), res.stderr
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "wd").exists()
