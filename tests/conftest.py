"""Shared fixtures: a small synthetic dataset and a tiny, fast config."""

import contextlib
import os
import pathlib
import tempfile

import jax
import ml_collections
import numpy as np
import pytest
from absl import logging

import lottery
from lottery import jobs
from lottery import models
from lottery.models import mlp
from lottery import tickets

logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
# Tests exercise mid-run checkpoints of runs that take seconds: no time floor
# (subprocesses of the tests inherit it).
os.environ["LOTTERY_CHECKPOINT_MIN_S"] = "0"


def make_npz(path, n_train=256, n_test=64, dim=8, classes=3, seed=0):
  """Linearly separable-ish Gaussian blobs, saved as the npz loader expects."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(classes, dim)) * 2.0
  def split(n):
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, dim))
    return x.astype(np.float32), y.astype(np.int64)
  x_tr, y_tr = split(n_train)
  x_te, y_te = split(n_test)
  np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
  return str(path)


@pytest.fixture(scope="session")
def npz_path(tmp_path_factory):
  return make_npz(tmp_path_factory.mktemp("data") / "blobs.npz")


@pytest.fixture(scope="session", autouse=True)
def _temp_dir(tmp_path_factory):
  """Temporary files and folders of the code under test (and of the
  launchers the tests start) go to the session's temp dir, not /tmp: TFDS
  leaves an empty folder there for every builder of an unprepared dataset
  (`DatasetInfo.initialize_from_bucket`), which the tests make often."""
  temp = str(tmp_path_factory.mktemp("tmp"))
  old, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
  tempfile.tempdir, os.environ["TMPDIR"] = temp, temp
  yield
  tempfile.tempdir = old
  if old_env is None:
    os.environ.pop("TMPDIR", None)
  else:
    os.environ["TMPDIR"] = old_env


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
  """Keeps generated datasets (MNIST-1D) and compiled programs out of the
  user's cache. The session shares one persistent compilation cache, in
  process and with the launchers the tests start (they read $LOTTERY_CACHE):
  the suite is compile-bound, and many tests compile the same model's
  programs (ResNet-20's initializer alone takes seconds). $LOTTERY_TEST_CACHE
  names a cache to use instead, which outlives the session: .ci/run gives
  both tiers one, so the second reads what the first compiled."""
  old = os.environ.get("LOTTERY_CACHE")
  if os.environ.get("LOTTERY_TEST_CACHE"):
    cache = pathlib.Path(os.environ["LOTTERY_TEST_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
  elif os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist: the workers share one cache (beside their own temp dirs).
    cache = tmp_path_factory.getbasetemp().parent / "cache"
    cache.mkdir(exist_ok=True)
  else:
    cache = tmp_path_factory.mktemp("cache")
  os.environ["LOTTERY_CACHE"] = str(cache)
  old_dir = jax.config.jax_compilation_cache_dir
  old_min = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", str(cache / "jax"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  yield
  jax.config.update("jax_compilation_cache_dir", old_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
  if old is None:
    os.environ.pop("LOTTERY_CACHE", None)
  else:
    os.environ["LOTTERY_CACHE"] = old


@contextlib.contextmanager
def compilations():
  """Counts XLA compilations in the block: yields a list that gets one entry
  per compilation. The persistent cache is off meanwhile (a hit is not a
  compilation)."""
  events = []
  def listener(name, *a, **k):
    del a, k
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)
  jax.config.update("jax_enable_compilation_cache", False)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.config.update("jax_enable_compilation_cache", True)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_devices(script: str, *args: str, devices: int) -> dict:
  """Runs `python -c script args...` from the repository root in a process
  whose CPU is split into `devices` host devices (XLA_FLAGS; the tests
  folder importable: `from conftest import tiny`); returns the JSON object
  its last line prints, after checking that it exited 0."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  res = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def execute_notebook(name: str, workdir, monkeypatch, tmp_path,
                     images: int = 0) -> str:
  """Runs notebooks/<name> on `workdir` (in `tmp_path`); returns what it
  printed. Fails on an error output or a traceback in the text (nbclient
  raises CellExecutionError on an error), on a figure shown as text, and
  with fewer than `images` figures drawn."""
  import nbformat  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
  monkeypatch.setenv("LOTTERY_WORKDIR", str(workdir))
  monkeypatch.delenv("LOTTERY_ANALYSIS_DIR", raising=False)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT), os.environ.get("PYTHONPATH", "")]))
  NotebookClient(nb, timeout=120, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert all(o["output_type"] != "error" for o in outputs)
  text = "".join(o.get("text", "") for o in outputs)
  assert "Traceback" not in text
  # Every figure it displays is drawn: an image, not matplotlib's
  # '<Figure size ...>' text (what a kernel shows of a figure built without
  # pyplot when the inline display is off).
  shown = [o["data"] for o in outputs if "data" in o]
  assert not [d for d in shown if "image/png" not in d and
              d.get("text/plain", "").startswith("<Figure")], shown
  assert sum("image/png" in d for d in shown) >= images
  return text


def workdir_files(wd: pathlib.Path) -> dict:
  """{relative path: bytes} of every file in a workdir but its lock."""
  return {p.relative_to(wd).as_posix(): p.read_bytes()
          for p in sorted(wd.rglob("*")) if p.is_file() and p.name != "lock"}


def quiet(_):
  """A `log` that shows nothing."""


def leaves_equal(a, b):
  """Whether two pytrees have the same leaves, bit for bit."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


class Interrupt(Exception):
  """Raised into a run by `run_interrupted`."""


def run_interrupted(run, monkeypatch, *, saves=(), finishes=()) -> int:
  """Calls `run()` until it returns, interrupting it just after the mid-run
  checkpoint saves numbered in `saves` and the ticket writes numbered in
  `finishes` (counted over all calls, from 1); returns the number of
  interruptions."""
  real_save, real_finish = jobs.MidRun.save, tickets.save_ticket
  calls = {"save": 0, "finish": 0}

  def save(self, *a, **k):
    real_save(self, *a, **k)
    calls["save"] += 1
    if calls["save"] in saves:
      raise Interrupt()

  def finish(*a, **k):
    real_finish(*a, **k)
    calls["finish"] += 1
    if calls["finish"] in finishes:
      raise Interrupt()

  monkeypatch.setattr(jobs.MidRun, "save", save)
  monkeypatch.setattr(tickets, "save_ticket", finish)
  return _until_returns(run, Interrupt)


def run_until_round(config, workdir, round_: int) -> None:
  """Runs IMP's `config` in `workdir` and stops it once round `round_` is
  recorded, as if the run were still in flight."""
  def stop(rec):
    if rec["round"] == round_:
      raise Interrupt()
  with pytest.raises(Interrupt):
    lottery.run(config, workdir, log=quiet, on_round=stop)


def _until_returns(run, interrupt: type[Exception]) -> int:
  """Calls `run()` again after each `interrupt` until it returns; the
  number of interruptions."""
  interruptions = 0
  while True:
    try:
      run()
      return interruptions
    except interrupt:
      interruptions += 1


def tiny(npz_path, **overrides):
  """A config that trains in well under a second per round (of the method
  `method=`, default 'imp': another method's fields stay at their
  defaults)."""
  c = lottery.base_config()
  c.method = overrides.pop("method", "imp")
  c.data.name = "npz"
  c.data.path = npz_path
  c.model.name = "mlp_tiny"
  c.training.update(steps=20, batch_size=16, optimizer="adam",
                    learning_rate=1e-2, eval_every=5, checkpoint_every=10)
  if c.method == "imp":
    c.pruning.update(fraction=0.5, rounds=2)
  if overrides.get("data.name", "npz") not in ("npz", "images"):
    c.data.path = ""  # Another dataset: data.path is not read.
  for key, value in overrides.items():
    _set_field(c, key, value)
  return c


def _set_field(config, key, value):
  """Sets the field `key` ('training.steps') of a config or dict."""
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def config_from_dict(npz_path, changes):
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
    _set_field(d, key, value)
  return ml_collections.ConfigDict(d)


@pytest.fixture
def tiny_config(npz_path):
  return lambda **kw: tiny(npz_path, **kw)


def run_until_finished(config, workdir, interrupt: type[Exception]) -> int:
  """Runs `config` on `workdir` again after each `interrupt` raised inside
  it (a test's stand-in for a killed run) until it finishes; returns how
  many times it was interrupted."""
  return _until_returns(lambda: lottery.run(config, workdir, log=quiet),
                        interrupt)


def mlp_tiny_params(dim=6):
  """mlp_tiny's params: fc1 (dim, 32), out (32, 3), with biases."""
  x = np.zeros((1, dim), np.float32)
  return models.get("mlp_tiny", 3).init(jax.random.key(0), x)["params"]


def with_leaf(mask, name, leaf):
  """`mask` with leaf 'module/name' replaced (a copy)."""
  mod, _, key = name.partition("/")
  return {**mask, mod: {**mask[mod], key: leaf}}


class Unitless(mlp.MLP):
  """mlp_tiny without `coupling()`: a model that declares no units (every
  registered model declares its own)."""
  coupling = None


@pytest.fixture
def unitless():
  """The name of a registered model that declares no units ('unitless',
  unregistered after the test)."""
  models.register("unitless")(
      lambda num_classes: Unitless(features=(32,), num_classes=num_classes))
  yield "unitless"
  models.unregister("unitless")
