"""Sparse training: the mask-update hooks (exact counts under jit, RigL and
SET against hand-checked masks, GMP's cubic schedule) and the driver end to
end (records, tickets with their initial masks, resume, bad input)."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import analysis
from lottery import distributions
from lottery import masks
from lottery import pruning
from lottery import sparse_updates as su
from lottery import step as step_lib
from lottery import straight_through

from conftest import execute_notebook
from conftest import leaves_equal
from conftest import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _state(params, mask, step):
  return step_lib.TrainState(params=params, model_state={}, opt_state={},
                             mask=mask, step=jnp.int32(step),
                             rng=jax.random.key_data(jax.random.key(0)))


def _kept(mask):
  return {k: c for k, (c, _) in masks.counts(mask).items()}


def test_keep_top_with_traced_counts_equals_keep_top_with_ties():
  rng = np.random.default_rng(0)
  alive = [rng.random((7, 5)) < 0.6, rng.random(13) < 0.8, rng.random(4) < 1]
  # Integer scores: many ties, broken by position as keep_top breaks them.
  scores = [rng.integers(0, 3, a.shape).astype(np.float32) for a in alive]
  keep = [5, 3, 0]
  tree = {f"l{i}": a for i, a in enumerate(alive)}
  want = pruning.keep_top(tree, {f"l{i}": s for i, s in enumerate(scores)},
                          {f"l{i}": k for i, k in enumerate(keep)})
  got, _, _ = jax.jit(pruning.keep_top_core)(
      [jnp.asarray(a) for a in alive], [jnp.asarray(s) for s in scores],
      jnp.asarray(keep, jnp.int32))
  for i, g in enumerate(got):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(want[f"l{i}"]))


def test_rigl_hook_hand_checked():
  # One leaf of 8, 4 kept; drop round(0.5 x 4) = 2 smallest |w| (weights 1
  # and 3), grow the 2 largest |grad| among the others (the just-dropped
  # weight 3 has the largest gradient: it comes straight back, as in the
  # RigL code), and weight 6 (|g| 0.7 beats 0.5).
  w = jnp.asarray([0., 0.1, 0., -0.2, 0.9, 0., 0., -0.8])
  m = jnp.asarray([0, 1, 0, 1, 1, 0, 0, 1], bool)
  g = jnp.asarray([0.5, 0.0, 0.1, 3.0, 0.0, 0.2, -0.7, 0.0])
  params, mask = {"k": w, "b": jnp.zeros(2)}, {"k": m, "b": None}
  table = np.asarray([[0], [2]], np.int32)
  hook = jax.jit(su.drop_and_grow("rigl", mask, {"k": 4}, table, 10))
  new = hook(_state(params, mask, 10), {"k": g, "b": jnp.zeros(2)},
             jax.random.key(0))
  assert new["b"] is None
  np.testing.assert_array_equal(np.asarray(new["k"]),
                                [0, 0, 0, 1, 1, 0, 1, 1])


@pytest.mark.parametrize("kind", ["set", "rigl"])
def test_counts_exact_under_jit_over_many_updates(kind):
  rng = np.random.default_rng(1)
  shapes = {"fc1": (12, 30), "fc2": (30, 30), "out": (30, 4)}
  params = {k: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32),
                "bias": jnp.zeros(s[1])} for k, s in shapes.items()}
  dense = masks.make_mask(params)
  counts = distributions.keep_counts("erk", dense, 0.2)
  mask = pruning.keep_top(dense, lottery.scores.random(
      dense, jax.random.key(3)), counts)
  table = su.drop_table(counts, su.drop_fractions(2000, 10, 0.3, 0.75))
  hook = jax.jit(su.drop_and_grow(kind, dense, counts, table, 10))
  first, changed = mask, 0
  for j in range(1, 200):
    grads = jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=p.shape), jnp.float32), params)
    new = hook(_state(params, mask, 10 * j), grads, jax.random.key(j))
    assert _kept(new) == counts, j
    # Dropped and grown: exactly the scheduled number per leaf.
    for i, k in enumerate(counts):
      path = k.split("/")[0]
      gone = int(np.sum(np.asarray(mask[path]["kernel"]) &
                        ~np.asarray(new[path]["kernel"])))
      assert gone <= table[j, i], (j, k)
    changed += not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b
                       in zip(jax.tree.leaves(mask), jax.tree.leaves(new)))
    mask = new
    params = jax.tree.map(lambda p: p + jnp.asarray(
        rng.normal(size=p.shape) * 0.1, jnp.float32), params)
  # Nothing drops from T_end = 1500 (update 150) on, nor where the annealed
  # fraction of a count rounds to 0; every other update changes the mask.
  assert not table[150:].any() and table[1:136].all()
  assert changed == su.changes(table, kind) == 138
  assert analysis.overlap(mask, first) < 1.0


def test_drop_fractions_cosine():
  f = su.drop_fractions(1000, 100, 0.3, 0.5)
  # Updates 1..9 (steps 100..900), then a 0 row for a due last step.
  assert len(f) == 11 and f[0] == 0.0
  np.testing.assert_allclose(f[1:5], [0.15 * (1 + np.cos(np.pi * s / 500))
                                      for s in (100, 200, 300, 400)])
  assert list(f[5:]) == [0.0] * 6
  # A last step that is due (steps 1001): it changes nothing.
  g = su.drop_fractions(1001, 100, 0.3, 1.0)
  assert len(g) == 11 and g[9] > 0 and g[10] == 0.0
  assert su.drop_table({"a": 100}, f)[1, 0] == pruning.num_to_remove(f[1], 100)


def test_gmp_table_cubic_and_exact():
  table = su.gmp_table({"a": 1000, "b": 10}, {"a": 100, "b": 1}, steps=1000,
                       update_every=100, begin_step=200, end_step=600)
  # s_t = s_f (1 - (1 - p)^3) with p = (t - 200) / 400: 900 x 37/64 =
  # 520.3 pruned at p = 1/4, 900 x 7/8 = 787.5 -> 788 (halves up) at 1/2.
  assert table[:, 0].tolist() == [1000, 1000, 1000, 1000 - 520, 1000 - 788,
                                  1000 - 886, 100, 100, 100, 100]
  assert table[:, 1].tolist() == [10, 10, 10, 10 - 5, 10 - 8, 10 - 9, 1, 1,
                                  1, 1]
  assert su.changes(table, "gmp") == 4


def test_gmp_hook_prunes_smallest_magnitudes():
  w = jnp.asarray([[0.5, -0.1], [0.3, -0.9]])
  mask = {"k": jnp.ones((2, 2), bool)}
  hook = jax.jit(su.magnitude_schedule(mask, np.asarray([[4], [2]]), 5))
  new = hook(_state({"k": w}, mask, 5), {"k": w}, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(new["k"]), [[1, 0], [0, 1]])


@pytest.fixture(scope="module")
def sparse_run(npz_path, tmp_path_factory):
  from conftest import tiny
  c = tiny(npz_path, **{"method": "sparse", "seeds.num": 2,
                        "training.steps": 20,
                        "sparse.densities": (0.25,),
                        "sparse.distribution": ("erk",),
                        "sparse.update_every": 5, "sparse.end_step": 15})
  wd = tmp_path_factory.mktemp("sparse") / "run"
  lines = []
  summary = lottery.sparse.run(c, wd, log=lines.append)
  return c, wd, summary, lines


def test_run_records_tickets_and_exact_counts(sparse_run):
  c, wd, summary, lines = sparse_run
  assert summary["finished"] and len(lines) == 5
  runs = summary["runs"]
  assert [(r["method"], r["seed"]) for r in runs] == [
      (m, i) for m in ("dense", "static", "set", "rigl", "gmp")
      for i in (0, 1)]
  dense = lottery.load_ticket(wd, method="dense", seed=0)
  counts = distributions.keep_counts("erk", dense.mask, 0.25)
  first_masks = {}
  for r in runs:
    t = lottery.load_ticket(wd, method=r["method"], distribution=r[
        "distribution"], target_density=r["target_density"], seed=r["seed"])
    assert t.coords == {k: r[k] for k in ("method", "distribution",
                                          "target_density", "seed")}
    hist = t.metrics["history"]
    assert [h["step"] for h in hist] == [5, 10, 15, 20]
    assert hist[-1]["mask_change"] == pytest.approx(r["mask_change"])
    assert r["mask_change"] == 1 - analysis.overlap(t.mask, t.initial_mask)
    for n, m in masks.named_leaves(t.mask).items():
      if m is not None:  # Pruned weights exactly 0 at the end.
        assert not np.any(masks.named_leaves(t.trained_params)[n][~m])
    if r["method"] == "dense":
      assert r["density"] == 1.0 and r["mask_updates"] == 0
      continue
    assert _kept(t.mask) == counts, r["method"]
    total = sum(n for _, n in masks.counts(t.mask).values())
    assert r["density"] == sum(counts.values()) / total
    if r["method"] == "gmp":
      assert _kept(t.initial_mask) == {k: n for k, (_, n) in
                                       masks.counts(t.mask).items()}
      assert [h["mask_density"] for h in hist][-1] == r["density"]
      assert r["mask_updates"] == 3 and r["mask_change"] == 0.0
    else:
      assert _kept(t.initial_mask) == counts
      # static, SET and RigL start from the same random mask per seed.
      prev = first_masks.setdefault(r["seed"], t.initial_mask)
      assert jax.tree.all(jax.tree.map(np.array_equal, prev, t.initial_mask))
    if r["method"] == "static":
      assert r["mask_change"] == 0.0 and r["mask_updates"] == 0
      assert jax.tree.all(jax.tree.map(np.array_equal, t.mask,
                                       t.initial_mask))
    if r["method"] in ("set", "rigl"):
      # Updates at steps 5 and 10 (fraction 0 from T_end = 15 on).
      assert r["mask_updates"] == 2 and r["mask_change"] > 0
  assert lottery.sparse.summary(wd)["finished"]


def test_rerun_loads_everything(sparse_run):
  c, wd, summary, _ = sparse_run
  again = lottery.sparse.run(c, wd, log=lambda _: None)
  assert again["runs"] == summary["runs"]


def test_bad_input_refused_in_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  res = subprocess.run(
      [sys.executable, "-m", "experiments.sparse",
       "--config=sparse_mnist1d:quick", f"--workdir={tmp_path / 'wd'}",
       "--config.sparse.update_every=500"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=120)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines() == [
      "error: sparse.update_every: no mask update happens in "
      "training.steps=200 for ['set', 'rigl', 'gmp'] (got 500)"]
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_notebook_on_the_run(sparse_run, monkeypatch, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  _, wd, summary, _ = sparse_run
  text = execute_notebook("sparse_training.ipynb", wd, monkeypatch, tmp_path,
                          images=2)
  assert f"10 runs finished in {wd} (run finished); replicates: 2" in text
  tables = json.loads((wd / "analysis" / "tables.json").read_text())
  runs = summary["runs"]
  acc = {r["method"]: r for r in tables["test_accuracy"]}
  for m in ("dense", "static", "set", "rigl", "gmp"):
    vals = [r["test_accuracy"] for r in runs if r["method"] == m]
    assert (acc[m]["mean"], acc[m]["std"], acc[m]["n"]) == (
        float(np.mean(vals)), float(np.std(vals)), 2)
  change = {r["method"]: r for r in tables["mask_change"]}
  assert sorted(change) == ["gmp", "rigl", "set", "static"]
  for m, row in change.items():
    assert row["step"] == [5, 10, 15, 20]
    finals = [r["mask_change"] for r in runs if r["method"] == m]
    assert row["mean"][-1] == pytest.approx(float(np.mean(finals)))
  assert change["static"]["mean"] == [0.0] * 4
  for name in ("accuracy_by_method", "mask_change"):
    assert (wd / "analysis" / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("changes,message", [
    ({"sparse.update_every": 20}, "sparse.update_every: no mask update "
     "happens in training.steps=20 for ['set', 'rigl', 'gmp'] (got 20)"),
    # Step 19 is the last: an update there would have no training after it.
    ({"sparse.update_every": 19}, "sparse.update_every: no mask update "
     "happens in training.steps=20 for ['set', 'rigl', 'gmp'] (got 19)"),
    ({"sparse.update_every": 1, "sparse.end_step": 19}, "sparse.end_step: "
     "GMP must reach its target at an update step (multiple of "
     "sparse.update_every=1) below training.steps=20, the last being 18 (got "
     "19)"),
    ({"sparse.begin_step": 15}, "sparse.begin_step: must be below GMP's end "
     "step 15 (got 15)"),
    ({"sparse.update_every": 8, "sparse.end_step": 17}, "sparse.end_step: GMP "
     "must reach its target at an update step (multiple of "
     "sparse.update_every=8) below training.steps=20, the last being 16 (got "
     "17)"),
    ({"sparse.end_step": 3, "sparse.begin_step": 3}, "sparse.end_step: must "
     "be 0 (end_fraction x training.steps) or above sparse.begin_step=3 (got "
     "3)"),
])
def test_check_refuses_steps_out_of_training(tiny_config, changes, message):
  c = tiny_config(**{"sparse.update_every": 5, **changes})
  with pytest.raises(lottery.LotteryError) as e:
    lottery.sparse.check(c)
  assert str(e.value) == message
  # A run without GMP does not need GMP's steps in training.
  if "GMP" in message:
    c.sparse.methods = ("static", "rigl")
    lottery.sparse.check(c)


def test_a_registered_sparse_method_is_what_sparse_calls(request, npz_path,
                                                         tmp_path):
  seen = []

  @su.register("frozen", dynamic=False)
  def frozen(mask, counts, **schedule):
    seen.append(sorted(schedule))
    return None, 0

  request.addfinalizer(lambda: su.unregister("frozen"))
  assert "frozen" in su.names(dynamic=False)
  c = tiny(npz_path, method="sparse", **{
      "sparse.methods": ("frozen",), "sparse.densities": (0.5,),
      "sparse.distribution": ("uniform",)})
  summary = lottery.sparse.run(c, tmp_path / "wd", log=lambda _: None)
  assert [r["method"] for r in summary["runs"]] == ["dense", "frozen"]
  assert seen and all(s == ["begin_step", "drop_fraction", "end_fraction",
                            "end_step", "n_m", "sr_ste_decay", "steps",
                            "update_every"]
                      for s in seen)


# -- N:M sparse training ('nm') ----------------------------------------------

def _runs_of(k, m, axis):
  """Kept weights per run of m along `axis` of a kernel."""
  k = np.moveaxis(np.asarray(k), axis, -1)
  return k.reshape(k.shape[:-1] + (k.shape[-1] // m, m)).sum(axis=-1)


def test_n_m_hook_hand_checked():
  # A (8, 1) kernel, 2:4 along axis 0, drop 1: the smallest |w| active
  # weight (row 5, 0.05) goes and its run (rows 4-7) grows the largest
  # |grad| of rows 5, 6, 7 (row 6: 0.9 beats the just-dropped 0.8); the run
  # of rows 0-3 is untouched though row 2's gradient is the largest.
  w = jnp.asarray([0.5, -0.4, 0., 0., 0.3, 0.05, 0., 0.])[:, None]
  m = jnp.asarray([1, 1, 0, 0, 1, 1, 0, 0], bool)[:, None]
  g = jnp.asarray([0., 0., 5., 0., 0., 0.8, -0.9, 0.1])[:, None]
  mask = {"k": m}
  hook = jax.jit(su.n_m_rigl(mask, np.asarray([[0], [1]], np.int32), 10,
                             "2:4"))
  new = hook(_state({"k": w}, mask, 10), {"k": g}, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(new["k"])[:, 0],
                                [1, 1, 0, 0, 1, 0, 1, 0])


def test_n_m_masks_keep_n_of_every_m_along_the_input_axis_at_every_update():
  rng = np.random.default_rng(2)
  shapes = {"conv": (3, 3, 8, 8), "fc": (16, 12), "out": (12, 3)}
  params = {k: {"kernel": jnp.asarray(rng.normal(size=s), jnp.float32),
                "bias": jnp.zeros(s[-1])} for k, s in shapes.items()}
  dense = masks.make_mask(params)
  counts = distributions.keep_counts("uniform", dense, 0.5)
  mask = pruning.prune(dense, lottery.scores.random(dense, jax.random.key(3)),
                       0.0, structure="2:4")
  hook, changes = su.get("nm")(dense, counts, steps=400, update_every=10,
                               drop_fraction=0.3, end_fraction=0.75,
                               begin_step=0, end_step=0, n_m="2:4")
  hook = jax.jit(hook)
  first, changed = mask, 0
  for j in range(40):
    for path, axis in (("conv", 2), ("fc", 0), ("out", 0)):
      k = mask[path]["kernel"]
      assert (_runs_of(k, 4, axis) == 2).all(), (j, path)
      if path != "out":  # Not along another axis (a random pattern).
        assert not (_runs_of(k, 4, k.ndim - 1) == 2).all(), (j, path)
    assert _kept(mask) == counts
    grads = jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=p.shape), jnp.float32), params)
    new = hook(_state(params, mask, 10 * (j + 1)), grads, jax.random.key(j))
    changed += not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b
                       in zip(jax.tree.leaves(mask), jax.tree.leaves(new)))
    mask = new
    params = jax.tree.map(lambda p: p + jnp.asarray(
        rng.normal(size=p.shape) * 0.1, jnp.float32), params)
  # RigL's cosine drop table: updates 1..28 drop (T_end = 300; at update
  # 29 the annealed fraction of every count rounds to 0), none after.
  assert changes == changed == 28
  assert analysis.overlap(mask, first) < 1.0


@pytest.fixture(scope="module")
def n_m_config(npz_path):
  return tiny(npz_path, method="sparse", **{
      "sparse.methods": ("nm", "sr_ste"), "sparse.densities": (0.5,),
      "sparse.distribution": ("uniform",), "sparse.update_every": 5,
      "sparse.n_m": "2:4", "training.checkpoint_every": 5})


def test_static_beside_n_m_methods_is_a_fixed_random_n_m_mask(n_m_config,
                                                             tmp_path):
  c = n_m_config.copy_and_resolve_references()
  c.sparse.methods = ("static", "nm")
  lottery.sparse.run(c, tmp_path, log=lambda _: None)
  t = lottery.load_ticket(tmp_path, method="static", distribution="uniform",
                          target_density=0.5)
  for m in (t.mask, t.initial_mask):
    for leaf in ("fc1", "out"):
      assert (_runs_of(m[leaf]["kernel"], 4, 0) == 2).all()
  assert leaves_equal(t.mask, t.initial_mask)  # Fixed.
  nm = lottery.load_ticket(tmp_path, method="nm", distribution="uniform",
                           target_density=0.5)
  assert leaves_equal(t.initial_mask, nm.initial_mask)  # One random draw.


def test_n_m_run_resumes_bit_identical_and_keeps_n_of_m(n_m_config, tmp_path,
                                                        monkeypatch):
  from conftest import leaves_equal, run_interrupted  # pylint: disable=g-import-not-at-top
  ref = lottery.sparse.run(n_m_config, tmp_path / "ref", log=lambda _: None)
  # Interrupted in nm's training, after its ticket, and in SR-STE's.
  assert run_interrupted(lambda: lottery.sparse.run(
      n_m_config, tmp_path / "run", log=lambda _: None), monkeypatch,
                         saves=(4, 7), finishes=(2,)) == 3
  nm, sr = [[r for r in ref["runs"] if r["method"] == m][0]
            for m in ("nm", "sr_ste")]
  assert nm["density"] == 0.5 and nm["mask_updates"] == 2
  assert nm["mask_change"] > 0
  # SR-STE sets its mask every step (20), from weights that start whole.
  assert sr["density"] == 0.5 and sr["mask_updates"] == 20
  assert sr["mask_change"] > 0
  # The report's label names what the run reads.
  from lottery import report  # pylint: disable=g-import-not-at-top
  assert report.recipe(tmp_path / "ref") == (
      "mlp_tiny on npz, 20 steps, ΔT=5, N:M 2:4, λ_W=0.0002")
  for r in ref["runs"]:
    coords = {k: r[k] for k in ("method", "distribution", "target_density",
                                "seed")}
    a = lottery.load_ticket(tmp_path / "ref", **coords)
    b = lottery.load_ticket(tmp_path / "run", **coords)
    for f in ("mask", "initial_mask", "trained_params"):
      assert leaves_equal(getattr(a, f), getattr(b, f)), (r["method"], f)
    assert a.metrics["history"] == b.metrics["history"]
    if r["method"] in ("nm", "sr_ste"):
      for m in (a.mask, a.initial_mask):
        for leaf in ("fc1", "out"):
          assert (_runs_of(m[leaf]["kernel"], 4, 0) == 2).all()
      assert [h["mask_density"] for h in a.metrics["history"]] == [0.5] * 4
      for leaf in ("fc1", "out"):  # Pruned weights are exactly 0.
        w = np.asarray(a.trained_params[leaf]["kernel"])
        assert (w[~np.asarray(a.mask[leaf]["kernel"])] == 0).all()
    if r["method"] == "sr_ste":
      # It starts from the N:M mask of the initial weights' magnitudes.
      exp = lottery.build(n_m_config)
      st = straight_through.sr_ste(exp.dense_mask, "2:4")
      assert leaves_equal(jax.device_get(st.mask(exp.init_params)),
                          a.initial_mask)


@pytest.mark.parametrize("changes,message", [
    ({"sparse.densities": (0.5, 0.25)}, "sparse.densities: 'nm' with "
     "sparse.n_m='2:4' trains at density N/M = 0.5: set sparse.densities to "
     "(0.5,) (got (0.5, 0.25))"),
    ({"sparse.distribution": ("uniform", "erk")}, "sparse.distribution: 'nm' "
     "keeps 2 of every 4 in every layer: set it to 'uniform' (got "
     "('uniform', 'erk'))"),
    ({"sparse.n_m": "neuron"}, "sparse.n_m: must be an N:M pattern such as "
     "'2:4' (got 'neuron')"),
    ({"sparse.n_m": "4:2"}, "sparse.n_m: an N:M structure needs 0 < N < M "
     "(got '4:2')"),
    ({"sparse.n_m": "1:3", "sparse.densities": (1 / 3,)}, "sparse.n_m: '1:3' "
     "groups 3 weights along axis 0 of fc1/kernel (shape (8, 32)), whose "
     "length 8 is not a multiple of 3"),
])
def test_n_m_bad_input_refused_before_writing(n_m_config, tmp_path, changes,
                                              message):
  c = n_m_config.copy_and_resolve_references()
  for k, v in changes.items():
    c.sparse[k.split(".")[1]] = v
  with pytest.raises(lottery.LotteryError) as e:
    lottery.sparse.run(c, tmp_path / "wd", log=lambda _: None)
  assert str(e.value) == message
  assert not (tmp_path / "wd").exists() or not any(
      (tmp_path / "wd").iterdir())
