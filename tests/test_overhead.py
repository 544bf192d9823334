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
from lottery import select

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
def test_overhead_script_prints_its_rows_and_json_line(cold_run):
  """Start-up figures and two jobs at two lengths each, tiny; --nolenet and
  --lenet_repeats (the old flags) still work."""
  cache = cold_run[0]
  res = subprocess.run(
      [sys.executable, "-m", "experiments.overhead", "--repeats=1",
       "--jobs=lenet,mnist1d", "--nolenet", "--levels=1,3", "--steps=10",
       "--lenet_repeats=1", "--torch_threads=1"], cwd=ROOT, env=_env(cache),
      capture_output=True, text=True, timeout=600, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = res.stdout.strip().splitlines()
  out = json.loads(lines[-1])
  for k in ("bare_import_s", "run_10_steps_s", "bare_import_cpu_s",
            "run_10_steps_cpu_s"):
    assert out[k] > 0, k
  assert out["ratio"] == round(out["run_10_steps_s"] / out["bare_import_s"],
                               2)
  assert out["compile_cache"] is True and (cache / "jax").is_dir()
  assert list(out["jobs"]) == ["mnist1d"] and out["job_repeats"] == 1
  job = out["jobs"]["mnist1d"]
  assert (job["steps"], job["batch"]) == (10, 100)
  assert list(job["levels"]) == ["1", "3"]
  torch = importlib.util.find_spec("torch") is not None
  for row in (*job["levels"].values(), job["per_level"]):
    assert (row["torch_s"] is not None) == torch, row
    if torch:
      assert row["torch_vs_lottery"] == round(
          row["torch_s"] / row["lottery_s"], 2)
  one, three = job["levels"]["1"], job["levels"]["3"]
  assert job["per_level"]["lottery_s"] == round(
      (three["lottery_s"] - one["lottery_s"]) / 2, 3)
  # The table: a header and a row per length and the marginal level.
  assert [ln.split()[:2] for ln in lines[-4:-1]] == [
      ["mnist1d", "1"], ["mnist1d", "3"], ["mnist1d", "per"]]


def test_summarize_medians_ratios_and_marginal_level():
  runs = {"lottery": {1: [(2.0, 1.0), (4.0, 3.0), (3.0, 2.0)],
                      10: [(12.0, 11.0)]},
          "torch": {1: [(6.0, 4.0)], 10: [(42.0, 40.0)]}}
  out = overhead.summarize(runs)
  assert out["levels"] == {
      "1": {"lottery_s": 3.0, "lottery_cpu_s": 2.0, "torch_s": 6.0,
            "torch_cpu_s": 4.0, "torch_vs_lottery": 2.0,
            "torch_vs_lottery_cpu": 2.0},
      "10": {"lottery_s": 12.0, "lottery_cpu_s": 11.0, "torch_s": 42.0,
             "torch_cpu_s": 40.0, "torch_vs_lottery": 3.5,
             "torch_vs_lottery_cpu": 3.64}}
  # (12 - 3) / 9 = 1 s a level for ours, (42 - 6) / 9 = 4 for PyTorch.
  assert out["per_level"] == {
      "lottery_s": 1.0, "lottery_cpu_s": 1.0, "torch_s": 4.0,
      "torch_cpu_s": 4.0, "torch_vs_lottery": 4.0,
      "torch_vs_lottery_cpu": 4.0}
  alone = overhead.summarize({"lottery": {2: [(5.0, 4.0)]}, "torch": {}})
  assert alone["per_level"] is None
  assert alone["levels"]["2"]["torch_s"] is None
  assert alone["levels"]["2"]["torch_vs_lottery"] is None
  rows = overhead.table({"lenet": out}).splitlines()
  assert [r.split() for r in rows[1:]] == [
      ["lenet", "1", "3.00", "6.00", "2.00", "2.00"],
      ["lenet", "10", "12.00", "42.00", "3.50", "3.64"],
      ["lenet", "per", "level", "1.00", "4.00", "4.00", "4.00"]]


def _dry_run(flags, tmp_path):
  res = subprocess.run(
      [sys.executable, "-m", "experiments.imp", *flags,
       f"--workdir={tmp_path / 'wd'}", "--dry_run"], cwd=ROOT,
      env=_env(tmp_path / "cache"), capture_output=True, text=True,
      timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout[:res.stdout.rindex("}") + 1])


def test_lenet_flags_resolve_to_openlth_job(tmp_path):
  # A small stand-in of the job's data: the dry run loads it.
  overhead.write_synthetic(tmp_path / "x.npz", (28, 28, 1), 64, 16)
  config = _dry_run(overhead.lenet_flags(str(tmp_path / "x.npz")), tmp_path)
  assert config["model"]["name"] == "lenet_300_100"
  assert config["controls"] == []
  assert config["pruning"]["rounds"] == 2
  assert (config["training"]["steps"], config["training"]["batch_size"],
          config["training"]["learning_rate"]) == (938, 64, 1.2e-3)
  assert (config["pruning"]["fraction"], config["pruning"]["layer_fractions"],
          config["pruning"]["reset"], config["pruning"]["rewind_step"]) == (
              0.2, "out/kernel=0.1", "rewind", 0)


@pytest.mark.slow
def test_mnist1d_and_resnet20_flags_resolve_to_their_recipes(tmp_path):
  """The default recipe changed in its rounds only; ResNet-20's in its
  length (2 levels x 200 steps, the constant rate of its first 32K steps),
  its data and rewind step (0), without controls."""
  c = _dry_run(overhead.mnist1d_flags("", levels=10), tmp_path)
  from configs import mnist1d  # pylint: disable=g-import-not-at-top
  default = mnist1d.get_config().to_dict()
  assert c["pruning"]["rounds"] == 9
  c["pruning"]["rounds"] = default["pruning"]["rounds"]
  for block in ("model", "training", "pruning", "data"):
    assert c[block] == json.loads(json.dumps(default[block])), block
  assert (c["controls"], c["controls_every"]) == (
      ["reinit", "random_prune"], 4)
  overhead.write_synthetic(tmp_path / "x.npz", (32, 32, 3), 128, 16)
  r = _dry_run(overhead.resnet20_flags(str(tmp_path / "x.npz")), tmp_path)
  assert (r["model"]["name"], r["data"]["augment"], r["controls"]) == (
      "resnet20", "crop_flip", [])
  assert {k: r["training"][k] for k in (
      "steps", "batch_size", "optimizer", "learning_rate", "momentum",
      "weight_decay", "schedule", "eval_every")} == {
          "steps": 200, "batch_size": 128, "optimizer": "sgd",
          "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
          "schedule": "constant", "eval_every": 200}
  assert {k: r["pruning"][k] for k in (
      "rounds", "fraction", "scope", "prunable", "reset", "rewind_step")} == {
          "rounds": 1, "fraction": 0.2, "scope": "global",
          "prunable": [".*kernel"], "reset": "rewind", "rewind_step": 0}


def _torch_job(tmp_path, name, shape, levels, steps, batch, eval_every):
  """Levels printed by job `name`'s PyTorch script on easy synthetic data
  (256 + 256 examples, classes apart by more than their noise)."""
  npz = tmp_path / "easy.npz"
  overhead.write_synthetic(npz, shape, 256, 256, signal=0.6, noise=0.1)
  script = tmp_path / "job.py"
  script.write_text(overhead.JOBS[name].torch_script)
  res = subprocess.run([sys.executable, str(script), str(npz), str(levels),
                        str(steps), str(batch), str(eval_every), "1"],
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  return [json.loads(line) for line in res.stdout.splitlines()]


def _densities(sizes, fractions, levels):
  """Densities level by level by lottery's one rounding rule
  (`select.num_to_remove`): `fractions` one per tensor (layerwise) or one
  number (global)."""
  if isinstance(fractions, float):
    kept, fractions = [sum(sizes)], [fractions]
  else:
    kept = list(sizes)
  out = []
  for level in range(levels):
    if level:
      kept = [k - select.num_to_remove(f, k) for k, f in zip(kept, fractions)]
    out.append(sum(kept) / sum(sizes))
  return out


needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed")


@needs_torch
def test_torch_lenet_job_prunes_as_the_lottery_job_and_learns(tmp_path):
  """20% of each hidden kernel and 10% of the output kernel per level,
  rounded as `lottery.prune` rounds; above chance after 60 steps."""
  levels = _torch_job(tmp_path, "lenet", (28, 28, 1), 3, 60, 32, 30)
  # fc1 784x300, fc2 300x100, out 100x10: 235200, 30000, 1000 weights.
  kept = [235200 + 30000 + 1000, 188160 + 24000 + 900,
          150528 + 19200 + 810]
  assert [lv["density"] for lv in levels] == [k / 266200 for k in kept]
  assert [lv["level"] for lv in levels] == [0, 1, 2]
  assert all(lv["ticket_accuracy"] > 0.5 for lv in levels), levels


@needs_torch
def test_torch_mnist1d_job_prunes_every_tensor_and_runs_the_controls(
    tmp_path):
  levels = _torch_job(tmp_path, "mnist1d", (40,), 6, 60, 32, 20)
  # fc1, fc2, out: kernel and bias each pruned 10% a level on its own.
  sizes = [20000, 500, 250000, 500, 5000, 10]
  assert [lv["density"] for lv in levels] == _densities(sizes, [0.1] * 6, 6)
  # Controls as configs/mnist1d.py runs them: every 4th level and the last.
  assert [sorted(lv) for lv in levels] == [
      ["density", "level", "ticket_accuracy", "time_s"]] * 4 + [
          ["density", "level", "random_prune_accuracy", "reinit_accuracy",
           "ticket_accuracy", "time_s"]] * 2
  assert all(lv["ticket_accuracy"] > 0.5 for lv in levels), levels


@needs_torch
def test_torch_resnet20_job_prunes_ours_kernels_globally(tmp_path):
  from lottery import models  # pylint: disable=g-import-not-at-top
  model = models.get("resnet20", 10)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  kernels = [leaf.size for path, leaf in jax.tree.leaves_with_path(
      shapes["params"]) if path[-1].key == "kernel"]
  assert len(kernels) == 22
  levels = _torch_job(tmp_path, "resnet20", (32, 32, 3), 3, 2, 16, 2)
  assert [lv["density"] for lv in levels] == _densities(kernels, 0.2, 3)
  assert all(0 <= lv["ticket_accuracy"] <= 1 for lv in levels)


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
