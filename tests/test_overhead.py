"""Start-up overhead: the compilation cache, lazy imports, the overhead script,
checkpoints by elapsed time."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import types
from typing import NamedTuple

import jax
import numpy as np
import pytest

from experiments import cli
from experiments import overhead
import lottery
from lottery import checkpoint
from lottery import jobs

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow_datasets", "tensorflow", "matplotlib", "mnist1d",
         "requests")


def _env(cache, **extra):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "LOTTERY_CACHE": str(cache)}
  env.pop(cli.NO_COMPILE_CACHE, None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return {**env, **extra}


def _fake_mnist1d_cache(cache: pathlib.Path) -> None:
  """A cache file of the standard set's shapes: a run reads it and never
  needs the mnist1d package."""
  rng = np.random.default_rng(0)
  cache.mkdir(parents=True, exist_ok=True)
  np.savez(cache / "mnist1d_standard.npz",
           x_train=rng.normal(size=(4000, 40)).astype(np.float32),
           y_train=rng.integers(0, 10, 4000), x_test=rng.normal(
               size=(1000, 40)).astype(np.float32),
           y_test=rng.integers(0, 10, 1000))


def _imported(stderr: str) -> set[str]:
  """Module names from `python -X importtime` output."""
  return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
          if line.startswith("import time:") and "|" in line}


def _run(workdir, cache, *extra, **env):
  return subprocess.run(
      [sys.executable, "-X", "importtime", "-m", "experiments.imp",
       *overhead.RUN_10_STEPS, *extra, f"--workdir={workdir}"],
      cwd=ROOT, env=_env(cache, **env), capture_output=True, text=True,
      timeout=300, check=False)


def _arrays(workdir) -> dict:
  """Every array of every ticket of a run, by (round, kind, leaf index)."""
  out = {}
  for p in sorted(pathlib.Path(workdir, "rounds").glob("*/*/arrays")):
    leaves = jax.tree.leaves(checkpoint.restore(p))
    for i, leaf in enumerate(leaves):
      out[(p.parent.parent.name, p.parent.name, i)] = leaf
  return out


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
  """(cache dir, workdir, result) of a run that filled an empty compilation
  cache; later runs on the cache are warm."""
  tmp = tmp_path_factory.mktemp("overhead")
  cache = tmp / "cache"
  _fake_mnist1d_cache(cache)
  res = _run(tmp / "cold", cache)
  assert res.returncode == 0, res.stderr[-3000:]
  return cache, tmp / "cold", res


@pytest.mark.slow
def test_compile_cache_hits_and_results_are_bit_identical(cold_run,
                                                          tmp_path):
  cache, cold_wd, cold = cold_run
  entries = sorted(p.name for p in (cache / "jax").iterdir())
  # The launcher caches every program it compiles, one entry each: four
  # programs (the key, the initializer, the train state and the loop with
  # its evaluation inside), not one op-by-op program (each cost ~10 ms of
  # tracing and cache lookup at every start). A count, not their names.
  assert len(entries) == 4, entries
  warm = _run(tmp_path / "warm", cache)
  assert warm.returncode == 0, warm.stderr[-3000:]
  # Every program came from the cache: nothing new was written.
  assert sorted(p.name for p in (cache / "jax").iterdir()) == entries
  a, b = _arrays(cold_wd), _arrays(tmp_path / "warm")
  assert len(a) == len(b) > 0 and a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
  ha = json.loads((cold_wd / "summary.json").read_text())
  hb = json.loads((tmp_path / "warm" / "summary.json").read_text())
  assert [(r["test_accuracy"], r["test_loss"]) for r in ha["rounds"]] == [
      (r["test_accuracy"], r["test_loss"]) for r in hb["rounds"]]
  # Lazy imports: a MNIST-1D run from its cached file needs none of these
  # (tensorboardX is imported: the run writes TensorBoard curves).
  for res in (cold, warm):
    assert not _imported(res.stderr) & set(HEAVY), _imported(
        res.stderr) & set(HEAVY)


@pytest.mark.parametrize("off", ["1", ""])
def test_no_compile_cache_opt_out(tmp_path, off):
  res = _run(tmp_path / "wd", tmp_path / "cache", "--dry_run",
             **{cli.NO_COMPILE_CACHE: off})
  assert res.returncode == 0, res.stderr[-3000:]
  assert (tmp_path / "cache" / "jax").is_dir() == (not off)


def test_enable_compile_cache_off_leaves_jax_alone(monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv(cli.NO_COMPILE_CACHE, "1")
  assert cli.enable_compile_cache() is None
  assert jax.config.jax_compilation_cache_dir == before


def test_import_and_build_import_nothing_heavy(tmp_path):
  """`import lottery` and building a MNIST-1D experiment import no TFDS,
  matplotlib, mnist1d, nor tensorboardX (until a writer is created)."""
  cache = tmp_path / "cache"
  _fake_mnist1d_cache(cache)
  code = ("import sys, lottery\n"
          "from lottery import experiment\n"
          "from experiments import cli\n"
          "c = cli.load_config('mnist1d:quick')\n"
          "experiment.build(c)\n"
          f"print(sorted(m for m in {HEAVY + ('tensorboardX', 'torch')!r} "
          "if m in sys.modules))\n")
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       env=_env(cache), capture_output=True, text=True,
                       timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_overhead_script_prints_its_json_line(cold_run):
  cache = cold_run[0]
  res = subprocess.run(
      [sys.executable, "-m", "experiments.overhead", "--repeats=1",
       "--nolenet"], cwd=ROOT, env=_env(cache), capture_output=True,
      text=True, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  for k in ("bare_import_s", "run_10_steps_s", "bare_import_cpu_s",
            "run_10_steps_cpu_s"):
    assert out[k] > 0, k
  assert out["ratio"] == round(out["run_10_steps_s"] / out["bare_import_s"],
                               2)
  assert out["compile_cache"] is True and "lenet_job_s" not in out
  assert (cache / "jax").is_dir()


def test_lenet_flags_resolve_to_openlth_job(tmp_path):
  res = subprocess.run(
      [sys.executable, "-m", "experiments.imp",
       *overhead.lenet_flags(str(tmp_path / "x.npz")),
       f"--workdir={tmp_path / 'wd'}", "--dry_run"], cwd=ROOT,
      env=_env(tmp_path / "cache"), capture_output=True, text=True,
      timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  config = json.loads(res.stdout[:res.stdout.rindex("}") + 1])
  assert config["model"]["name"] == "lenet_300_100"
  assert config["controls"] == []
  assert config["pruning"]["rounds"] == overhead.LENET_LEVELS - 1 == 2
  assert (config["training"]["steps"], config["training"]["batch_size"],
          config["training"]["learning_rate"]) == (938, 64, 1.2e-3)
  assert (config["pruning"]["fraction"], config["pruning"]["layer_fractions"],
          config["pruning"]["reset"], config["pruning"]["rewind_step"]) == (
              0.2, "out/kernel=0.1", "rewind", 0)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed")
def test_torch_job_prunes_as_the_lottery_job(tmp_path):
  """The PyTorch script keeps the counts that `lottery.prune` keeps: 20% of
  each hidden kernel and 10% of the output kernel per level, rounded."""
  rng = np.random.default_rng(0)
  npz = tmp_path / "small.npz"
  np.savez(npz, x_train=rng.random((64, 28, 28, 1), dtype=np.float32),
           y_train=rng.integers(0, 10, 64),
           x_test=rng.random((16, 28, 28, 1), dtype=np.float32),
           y_test=rng.integers(0, 10, 16))
  script = tmp_path / "job.py"
  script.write_text(overhead.TORCH_JOB)
  res = subprocess.run([sys.executable, str(script), str(npz), "3", "5", "16",
                        "1"], capture_output=True, text=True, timeout=300,
                       check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  levels = [json.loads(line) for line in res.stdout.splitlines()]
  # fc1 784x300, fc2 300x100, out 100x10: 235200, 30000, 1000 weights.
  kept = [235200 + 30000 + 1000, 188160 + 24000 + 900,
          150528 + 19200 + 810]
  assert [lv["density"] for lv in levels] == [k / 266200 for k in kept]


# --- mid-run checkpoints by elapsed time ---------------------------------------


class _State(NamedTuple):
  step: np.ndarray
  w: np.ndarray


def test_checkpoints_closer_than_the_floor_are_skipped(tmp_path, monkeypatch):
  now = [100.0]
  monkeypatch.setattr(jobs, "time", types.SimpleNamespace(
      monotonic=lambda: now[0], time=time.time))
  midrun = jobs.MidRun(tmp_path, min_interval_s=10)
  template = _State(np.int32(0), np.zeros(3, np.float32))
  written = []
  for t, step in ((105, 1), (111, 2), (115, 3), (120.5, 4), (121, 5),
                  (131, 6)):
    now[0] = t
    midrun.save("rounds/round_000/ticket", _State(np.int32(step),
                                                  np.full(3, step, np.float32)),
                [{"step": step}], {})
    saved = midrun.load("rounds/round_000/ticket", template)
    written.append(int(saved[0].step) if saved else None)
  # 10 s from the job's start (100) or the last checkpoint written: 105 is
  # too soon, 111 is written, 115 and 120.5 too soon, 121 and 131 written.
  assert written == [None, 2, 2, 2, 5, 6]
  state, history, _ = midrun.load("rounds/round_000/ticket", template)
  assert int(state.step) == 6 and state.w.tolist() == [6.0] * 3
  assert history == [{"step": 6}]
  # Only the newest checkpoint is kept: beside the progress file, one entry
  # (the directory of step 6's checkpoint), whatever its name.
  assert len(list((tmp_path / "progress").iterdir())) == 2


def test_checkpoint_floor_changes_no_result_and_resume_stays_exact(
    tiny_config, tmp_path, monkeypatch):
  cfg = tiny_config(**{"pruning.rounds": 1, "controls": ("reinit",),
                       "pruning.rewind_step": 5})
  lottery.run(cfg, tmp_path / "ref", log=lambda _: None)
  saves = []
  real_save = checkpoint.save
  def save(path, tree):
    saves.append(pathlib.Path(path).parent.name)
    real_save(path, tree)
  real_midrun_save = jobs.MidRun.save
  calls = [0]
  def midrun_save(self, *a, **k):
    real_midrun_save(self, *a, **k)
    calls[0] += 1
    if calls[0] == 2:  # Interrupted in the second job, after its checkpoint.
      raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint, "save", save)
  monkeypatch.setattr(jobs.MidRun, "save", midrun_save)
  monkeypatch.setenv(jobs.CHECKPOINT_MIN_S, "1e9")
  with pytest.raises(KeyboardInterrupt):
    lottery.run(cfg, tmp_path / "run", log=lambda _: None)
  lottery.run(cfg, tmp_path / "run", log=lambda _: None)
  assert calls[0] > 2 and "progress" not in saves  # Every one was skipped.
  for r, kind in ((0, "ticket"), (1, "ticket"), (1, "reinit")):
    a = lottery.load_ticket(tmp_path / "ref", r, kind)
    b = lottery.load_ticket(tmp_path / "run", r, kind)
    for f in ("mask", "rewind_params", "trained_params"):
      for x, y in zip(jax.tree.leaves(getattr(a, f)),
                      jax.tree.leaves(getattr(b, f))):
        assert x.tobytes() == y.tobytes(), (r, kind, f)
    assert a.metrics["history"] == b.metrics["history"]


@pytest.mark.parametrize("text,value", [("", jobs.DEFAULT_CHECKPOINT_MIN_S),
                                        ("0", 0.0), ("2.5", 2.5),
                                        (" 30 ", 30.0)])
def test_checkpoint_min_s_from_the_environment(monkeypatch, text, value):
  monkeypatch.setenv(jobs.CHECKPOINT_MIN_S, text)
  assert jobs.checkpoint_min_s() == value
  assert jobs.MidRun("/nonexistent").min_interval_s == value


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "ten"])
def test_checkpoint_min_s_refuses_what_is_not_seconds(monkeypatch, text):
  monkeypatch.setenv(jobs.CHECKPOINT_MIN_S, text)
  with pytest.raises(lottery.LotteryError, match=re.escape(
      f"LOTTERY_CHECKPOINT_MIN_S: must be a number of seconds >= 0 (got "
      f"{text!r})")):
    jobs.checkpoint_min_s()
