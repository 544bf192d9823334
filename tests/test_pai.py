"""Pruning at initialization end to end on a tiny model: the grid of methods x
densities x checks x replicates, the checks' masks and weights, resume, bad
input, and the notebook on the finished run."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import lottery
from lottery import analysis
from lottery import masks
from lottery import pruning

from conftest import execute_notebook
from conftest import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS, DENSITIES = ("snip", "synflow", "random"), (0.2,)


def _config(npz_path, **kw):
  c = tiny(npz_path, **{"method": "pai", "training.steps": 10,
                        "training.eval_every": 5,
                        "training.checkpoint_every": 5, "seeds.num": 2,
                        **kw})
  c.pai.update(methods=METHODS, densities=DENSITIES,
               checks=("shuffle", "reinit", "invert"),
               method_iterations="synflow=5", batch_size=32)
  return c


@pytest.fixture(scope="module")
def finished(npz_path, tmp_path_factory):
  wd = tmp_path_factory.mktemp("pai") / "run"
  lines = []
  summary = lottery.pai.run(_config(npz_path), wd, log=lines.append)
  return wd, summary, lines


def _load(wd, method, check, d, seed):
  return lottery.load_ticket(wd, method=method, check=check,
                             target_density=d, seed=seed)


def _kept(mask):
  return {n: k for n, (k, _) in masks.counts(mask).items()}


def test_grid_of_records_each_loadable(finished):
  wd, summary, lines = finished
  assert summary["finished"] and lottery.pai.summary(wd) == summary
  want = [("dense", None, 1.0, s) for s in (0, 1)]
  for m in METHODS:
    for d in DENSITIES:
      for c in (None,) + (("shuffle", "reinit", "invert") if m != "random"
                          else ()):
        want += [(m, c, d, s) for s in (0, 1)]
  runs = summary["runs"]
  assert [(r["method"], r["check"], r["target_density"], r["seed"])
          for r in runs] == want
  assert len(lines) == len(want) // 2  # One line per group of replicates.
  total = 8 * 32 + 32 * 3  # mlp_tiny on 8 features, 3 classes: kernels.
  for r in runs:
    t = _load(wd, r["method"], r["check"], r["target_density"], r["seed"])
    assert t.coords == {k: r[k] for k in ("method", "check",
                                          "target_density", "seed")}
    kept = sum(_kept(t.mask).values())
    assert r["density"] == kept / total == t.metrics["density"]
    assert r["layer_densities"] == t.metrics["layer_densities"]
    assert r["iterations"] == {"dense": 0, "synflow": 5}.get(r["method"], 1)
    if r["iterations"] == 1:  # One round: the one-shot count exactly.
      d = r["target_density"]
      assert kept == total - pruning.num_to_remove(1 - d, total)
    # Pruned weights are zero at the start and the end of training.
    for n, m in masks.named_leaves(t.mask).items():
      if m is not None:
        w0 = masks.named_leaves(t.rewind_params)[n]
        w1 = masks.named_leaves(t.trained_params)[n]
        assert not np.any(w0[~m]) and not np.any(w1[~m])


def test_replicates_have_their_own_init_and_masks(finished):
  wd, _, _ = finished
  a, b = (_load(wd, "snip", None, 0.2, s) for s in (0, 1))
  assert not np.array_equal(a.rewind_params["fc1"]["kernel"],
                            b.rewind_params["fc1"]["kernel"])
  assert not np.array_equal(a.mask["fc1"]["kernel"], b.mask["fc1"]["kernel"])
  d0 = _load(wd, "dense", None, 1.0, 0)
  assert np.array_equal(a.rewind_params["fc1"]["kernel"][a.mask["fc1"][
      "kernel"]], d0.rewind_params["fc1"]["kernel"][a.mask["fc1"]["kernel"]])


@pytest.mark.parametrize("method", ["snip", "synflow"])
def test_checks_masks_and_weights(finished, method):
  wd, _, _ = finished
  for seed in (0, 1):
    t = _load(wd, method, None, 0.2, seed)
    sh = _load(wd, method, "shuffle", 0.2, seed)
    re = _load(wd, method, "reinit", 0.2, seed)
    inv = _load(wd, method, "invert", 0.2, seed)
    # shuffle: same per-layer counts, other positions, same weights.
    assert _kept(sh.mask) == _kept(t.mask)
    assert not np.array_equal(sh.mask["fc1"]["kernel"], t.mask["fc1"]["kernel"])
    init = _load(wd, "dense", None, 1.0, seed).rewind_params
    for n, m in masks.named_leaves(sh.mask).items():
      if m is not None:
        np.testing.assert_array_equal(masks.named_leaves(sh.rewind_params)[n],
                                      np.where(m, masks.named_leaves(init)[n],
                                               0))
    # reinit: the same mask, fresh weights.
    assert all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(re.mask), jax.tree.leaves(t.mask)))
    assert not np.array_equal(re.rewind_params["fc1"]["kernel"],
                              t.rewind_params["fc1"]["kernel"])
    # invert: the same total, a different mask.
    assert sum(_kept(inv.mask).values()) == sum(_kept(t.mask).values())
    assert not np.array_equal(inv.mask["fc1"]["kernel"],
                              t.mask["fc1"]["kernel"])


def test_rerun_resumes_without_training(finished, npz_path):
  wd, summary, _ = finished
  before = {p: p.stat().st_mtime_ns for p in wd.glob("pai/**/metrics.json")}
  assert lottery.pai.run(_config(npz_path), wd) == summary
  assert {p: p.stat().st_mtime_ns
          for p in wd.glob("pai/**/metrics.json")} == before
  with pytest.raises(lottery.LotteryError, match="^config: workdir .* different "
                     "config"):
    lottery.pai.run(_config(npz_path, **{"training.steps": 12}), wd)


def test_batch_larger_than_the_training_set_refused(npz_path, tmp_path):
  c = _config(npz_path)
  c.pai.batch_size = 10_000
  with pytest.raises(lottery.LotteryError,
                     match=r"^pai.batch_size: 10000 exceeds the 256"):
    lottery.pai.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("flag,start", [
    ("--config.pai.methods=('snip','sinp')", "error: pai.methods: must be "
     "one of"),
    ("--config.pai.densities=(0.1,1.5)", "error: pai.densities: must be in "
     "(0, 1)"),
    ("--config.pai.method_iterations=synflow", "error: pai.method_iterations:"),
])
def test_cli_refuses_bad_input_in_one_line(flag, start, tmp_path, npz_path):
  res = subprocess.run(
      [sys.executable, "-m", "experiments.pai", f"--workdir={tmp_path}/wd",
       "--config=pai_mnist1d:quick", "--config.data.name=npz",
       f"--config.data.path={npz_path}", "--config.model.name=mlp_tiny", flag],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 1, res.stderr
  assert res.stderr.startswith(start) and res.stderr.count("\n") == 1, (
      res.stderr)
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_notebook_runs_on_the_finished_run(finished, monkeypatch, tmp_path):
  wd, summary, _ = finished
  execute_notebook("pruning_at_init.ipynb", wd, monkeypatch, tmp_path,
                   images=2)
  tables = json.loads((wd / "analysis" / "tables.json").read_text())
  want = analysis.table(lottery.records(wd), "test_accuracy",
                        by=("method", "check", "target_density"))
  assert tables["test_accuracy"] == want
  assert len(want) == len(summary["runs"]) // 2
  assert all(r["n"] == 2 for r in want)
  runs = {(r["method"], r["target_density"], r["seed"]): r
          for r in summary["runs"] if r["check"] is None}
  for p in tables["layer_densities"]:
    for layer, v in p["layers"].items():
      assert v == analysis.mean_std(
          [runs[p["method"], p["target_density"], s]["layer_densities"][layer]
           for s in (0, 1)])[0]
  assert (wd / "analysis" / "pai_layers.png").exists()


def test_a_check_is_the_control_kind_of_imp(finished):
  """`kind` means one thing in every method: PaI's records carry it
  ('ticket' for the method itself, else the check) and load_ticket takes
  it in place of `check`."""
  wd, _, _ = finished
  recs = lottery.records(wd)
  assert {(r["check"], r["kind"]) for r in recs} == {
      (None, "ticket"), ("shuffle", "shuffle"), ("reinit", "reinit"),
      ("invert", "invert")}
  for check, kind in ((None, "ticket"), ("shuffle", "shuffle")):
    a = lottery.load_ticket(wd, method="snip", check=check,
                            target_density=0.2, seed=1)
    b = lottery.load_ticket(wd, method="snip", kind=kind,
                            target_density=0.2, seed=1)
    assert a.coords == b.coords and a.metrics == b.metrics
  # Without kind or check, the method's own ticket, as IMP's default kind.
  c = lottery.load_ticket(wd, method="snip", target_density=0.2, seed=1)
  own = lottery.load_ticket(wd, method="snip", check=None,
                            target_density=0.2, seed=1)
  assert c.coords == own.coords and c.metrics == own.metrics
  assert np.array_equal(c.mask["fc1"]["kernel"], own.mask["fc1"]["kernel"])
  with pytest.raises(lottery.LotteryError, match=r"kind in \['invert', "):
    lottery.load_ticket(wd, method="snip", kind="random_prune",
                        target_density=0.2)


@pytest.mark.parametrize("group_score", ["sum", "l1", "l2"])
def test_invert_keeps_the_units_the_method_would_prune(npz_path,
                                                       group_score):
  """The 'invert' check ranks units in reverse under every reduction: at
  half the units, it keeps exactly the ones the method prunes (the l1 and
  l2 of negated scores would be the method's own)."""
  from lottery import pai  # pylint: disable=g-import-not-at-top
  exp = lottery.build(tiny(npz_path, method="pai"))
  kept = {}
  for invert in (False, True):
    mask = pai.prune_at_init(
        exp, "magnitude", 0.5, exp.init_params, exp.init_model_state,
        pai.score_batch(exp, 0), jax.random.key(0), invert=invert,
        structure="neuron", group_score=group_score)
    kept[invert] = np.any(np.asarray(mask["fc1"]["kernel"]), axis=0)
  assert kept[False].sum() == kept[True].sum() == 16
  assert np.array_equal(kept[True], ~kept[False])
