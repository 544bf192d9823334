"""The instability analysis (lottery.stability): the path functions checked
exactly, the method end to end on a tiny model (dense and IMP-ticket
sources), resume, and bad input refused before anything is written."""

import functools
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import stability
from lottery import step as step_lib

from conftest import make_npz
from conftest import run_on_devices
from conftest import tiny
from conftest import workdir_files


def _config(npz_path, **kw):
  c = tiny(npz_path, method="stability", **{
      "training.steps": 12, "training.eval_every": 6,
      "training.checkpoint_every": 6, "stability.steps": (0, 4),
      "stability.points": 5, **kw})
  return c


@pytest.fixture(scope="module")
def imp_run(npz_path, tmp_path_factory):
  wd = tmp_path_factory.mktemp("imp") / "run"
  c = tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 12,
                        "training.eval_every": 6, "controls": (),
                        "seeds.num": 2})
  lottery.run(c, wd)
  return wd


@pytest.fixture(scope="module")
def finished(npz_path, imp_run, tmp_path_factory):
  wd = tmp_path_factory.mktemp("stability") / "run"
  c = _config(npz_path, **{"seeds.num": 2,
                           "stability.sources": ("dense", "round=1"),
                           "stability.source_workdir": str(imp_run)})
  lines = []
  summary = lottery.driver.run(c, wd, log=lines.append)
  return c, wd, summary, lines


def test_interpolate_keeps_pruned_weights_at_zero():
  a = {"w": jnp.asarray([1.0, 2.0, 3.0, 4.0]), "b": jnp.asarray([1.0])}
  b = {"w": jnp.asarray([5.0, -2.0, 7.0, 0.5]), "b": jnp.asarray([3.0])}
  mask = {"w": jnp.asarray([True, False, True, False]), "b": None}
  for alpha in (0.0, 0.25, 0.5, 1.0):
    out = stability.interpolate(a, b, alpha, mask)
    assert out["w"][1] == 0.0 and out["w"][3] == 0.0
    assert out["w"][0] == pytest.approx(1 + 4 * alpha)
    assert out["b"][0] == pytest.approx(1 + 2 * alpha)
  ends = stability.interpolate(a, b, 0.0), stability.interpolate(a, b, 1.0)
  assert np.array_equal(ends[0]["w"], a["w"])
  assert np.array_equal(ends[1]["w"], b["w"])


def test_barrier_is_max_minus_mean_of_ends():
  assert stability.barrier([0.1, 0.3, 0.5, 0.2, 0.3]) == pytest.approx(0.3)
  assert stability.barrier([0.2, 0.1, 0.2]) == 0.0
  assert stability.barrier([0.4, 0.2]) == pytest.approx(0.1)


def test_batched_path_equals_separate_evaluations(npz_path):
  exp = lottery.build(tiny(npz_path))
  a = exp.init_params
  b, _ = exp.init(jax.random.key(7))
  eval_fn = step_lib.make_eval_step(exp.apply_fn)
  ds = exp.dataset
  path = stability.evaluate_path(eval_fn, a, b, exp.init_model_state, None,
                                 ds.x_test, ds.y_test, points=7)
  assert path["alpha"] == [float(x) for x in
                           np.linspace(0, 1, 7, dtype=np.float32)]
  from lottery import loop as loop_lib  # pylint: disable=g-import-not-at-top
  xs, ys, valid = loop_lib.eval_batches(ds.x_test, ds.y_test, 1000)
  one = jax.jit(eval_fn)
  for i, alpha in enumerate(path["alpha"]):
    m = one(stability.interpolate(a, b, np.float32(alpha)),
            exp.init_model_state, xs, ys, valid)
    assert path["error"][i] == 1.0 - float(m["accuracy"])
    assert path["loss"][i] == float(m["loss"])


def _linear_setup(npz_path):
  exp = lottery.build(tiny(npz_path))
  a = exp.init_params
  b, _ = exp.init(jax.random.key(7))
  mask = lottery.prune(lottery.make_mask(a), lottery.scores.magnitude(a), 0.5)
  return exp, a, b, mask


def test_linear_input_keeps_the_ends_and_equals_separate_points(npz_path):
  exp, a, b, mask = _linear_setup(npz_path)
  layer = stability.input_layer_of(exp.model)
  assert layer == "fc1"
  eval_fn = step_lib.make_eval_step(exp.apply_fn)
  ds, state = exp.dataset, exp.init_model_state
  plain = stability.evaluate_path(eval_fn, a, b, state, mask, ds.x_test,
                                  ds.y_test, points=7)
  linear = stability.evaluate_path(eval_fn, a, b, state, mask, ds.x_test,
                                   ds.y_test, points=7, input_layer=layer)
  # The ends are the networks' own evaluations, bit for bit; the inner
  # points agree to float rounding.
  for end in (0, -1):
    assert linear["loss"][end] == plain["loss"][end]
    assert linear["error"][end] == plain["error"][end]
  assert linear["loss"] == pytest.approx(plain["loss"], rel=1e-5)
  assert linear["loss"][1:-1] != plain["loss"][1:-1]  # Another computation.
  # All points in one program equal the points one at a time, computed the
  # same way, to float rounding (XLA fuses the batched combination
  # differently).
  from lottery import loop as loop_lib  # pylint: disable=g-import-not-at-top
  xs, ys, valid = loop_lib.eval_batches(ds.x_test, ds.y_test, 1000)
  am, bm = lottery.apply_mask(mask, a), lottery.apply_mask(mask, b)

  @jax.jit
  def one(alpha):
    with stability.linear_input(layer, am, bm, alpha):
      return eval_fn(stability.interpolate(a, b, alpha, mask), state, xs, ys,
                     valid)
  for i, alpha in enumerate(linear["alpha"]):
    m = one(np.float32(alpha))
    assert linear["loss"][i] == pytest.approx(float(m["loss"]), rel=1e-6)
    assert linear["error"][i] == 1.0 - float(m["accuracy"])


def test_linear_input_computes_the_layer_once_for_all_points():
  model = lottery.models.get("lenet_300_100", 10)
  x = np.random.default_rng(0).normal(size=(64, 784)).astype(np.float32)
  a = model.init(jax.random.key(0), x[:1])["params"]
  b = model.init(jax.random.key(1), x[:1])["params"]
  alphas = np.linspace(0, 1, 30, dtype=np.float32)

  def path(linear):
    def one(alpha):
      params = stability.interpolate(a, b, alpha)
      if not linear:
        return model.apply({"params": params}, x)
      with stability.linear_input(stability.input_layer_of(model), a, b,
                                  alpha):
        return model.apply({"params": params}, x)
    return jax.jit(jax.vmap(one)).lower(alphas).compile().cost_analysis()
  flops = {linear: path(linear)["flops"] for linear in (False, True)}
  # fc1 (784 x 300) is 88% of LeNet-300-100's multiply-adds: 2 of it
  # instead of 30 leave about a fifth of the work.
  assert flops[True] < 0.25 * flops[False], flops


def test_linear_input_with_recomputed_statistics_keeps_the_ends():
  net = _DenseBN(0.9)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  b = jax.tree.map(lambda p: p * -1.5 + 0.2, net.params)
  eval_fn = step_lib.make_eval_step(net.apply)
  kw = dict(points=5, apply_fn=net.apply,
            stats_x=stability.statistics_batches(x, 16))
  plain = stability.evaluate_path(eval_fn, net.params, b, net.state, None, x,
                                  y, **kw)
  linear = stability.evaluate_path(eval_fn, net.params, b, net.state, None,
                                   x, y, input_layer="fc", **kw)
  assert [linear["loss"][e] for e in (0, -1)] == [plain["loss"][e]
                                                  for e in (0, -1)]
  assert linear["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_records_and_tickets(finished):
  c, wd, summary, lines = finished
  assert summary["finished"]
  pairs = summary["pairs"]
  # 2 sources x 2 steps x 2 replicates.
  assert [(p["source"], p["k"], p["seed"]) for p in pairs] == [
      (s, k, i) for s in ("dense", "round=1") for k in (0, 4)
      for i in (0, 1)]
  # The pairs table like records: mean and std of the barrier over seeds.
  rows = lottery.analysis.table(pairs, "barrier_test", by=("source", "k"))
  assert [(r["source"], r["k"], r["n"]) for r in rows] == [
      (s, k, 2) for s in ("dense", "round=1") for k in (0, 4)]
  for r in rows:
    assert (r["mean"], r["std"]) == lottery.analysis.mean_std(
        [p["barrier_test"] for p in pairs
         if (p["source"], p["k"]) == (r["source"], r["k"])])
  for p in pairs:
    assert len(p["path"]["test_error"]) == 5
    assert p["barrier_test"] == stability.barrier(p["path"]["test_error"])
    assert p["barrier_train"] == stability.barrier(p["path"]["train_error"])
    # The ends of the path are the copies' own evaluations.
    for end, copy in ((0, 0), (-1, 1)):
      t = lottery.load_ticket(wd, source=p["source"], k=p["k"], copy=copy,
                              seed=p["seed"])
      assert p["path"]["test_error"][end] == 1.0 - t.metrics["test_accuracy"]
      # The loss agrees to float32 rounding: the loop's evaluation is fused
      # into its compiled chunk, the path's is a program of its own.
      assert p["path"]["test_loss"][end] == pytest.approx(
          t.metrics["test_loss"], rel=1e-6)
      assert t.metrics["start_step"] == p["k"]
    # The path says how it was computed: mlp_tiny's input layer once per
    # end, no statistics to recompute.
    assert p["path"]["input_layer"] == "fc1"
    assert p["path"]["recomputed_statistics"] is False
    assert p["path"]["path_batch"] == 5  # No convolutions: all points.
    if p["source"] == "dense":
      assert p["density"] == 1.0
    else:
      mask = lottery.load_ticket(c.stability.source_workdir, 1,
                                 seed=p["seed"]).mask
      t = lottery.load_ticket(wd, source=p["source"], k=p["k"], copy=0,
                              seed=p["seed"])
      for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(t.mask)):
        assert np.array_equal(m, x)
      assert p["density"] == pytest.approx(0.5, abs=0.01)
  # The copies at k start from the parent's weights at step k (masked).
  parent = lottery.load_ticket(wd, source="parent", k=4, copy=0, seed=1)
  copy = lottery.load_ticket(wd, source="dense", k=4, copy=1, seed=1)
  # An IMP coordinate is refused, listing the analysis's own.
  with pytest.raises(lottery.LotteryError,
                     match=r"^round: no ticket of .* has that coordinate; "
                           r"it has source in \['dense', 'parent', "
                           r"'round=1'\]; k in \[0, 4\]; copy in \[0, 1\]; "
                           r"seed in \[0, 1\]$"):
    lottery.load_ticket(wd, 1)
  for x, y in zip(jax.tree.leaves(parent.trained_params),
                  jax.tree.leaves(copy.rewind_params)):
    assert np.array_equal(x, y)
  # Copy 0 continues the parent's data order: it is the dense run itself.
  assert len([l for l in lines if "barrier" in l]) == 4


def test_same_data_gives_a_barrier_of_exactly_zero(npz_path, tmp_path):
  c = _config(npz_path, **{"stability.same_data": True,
                           "stability.steps": (4,)})
  summary = lottery.driver.run(c, tmp_path / "wd")
  (p,) = summary["pairs"]
  assert p["barrier_test"] == 0.0 and p["barrier_train"] == 0.0
  assert len(set(p["path"]["test_error"])) == 1
  assert len(set(p["path"]["test_loss"])) == 1


def test_rerun_resumes_without_training(finished, npz_path):
  c, wd, summary, _ = finished
  assert lottery.driver.run(c, wd) == summary


def test_a_damaged_path_is_refused_before_anything_is_written(finished,
                                                               tmp_path):
  c, wd, _, _ = finished
  copy = tmp_path / "run"
  shutil.copytree(wd, copy)
  (path,) = copy.glob("stability/round_1/k_4/seed_1/path.json")
  path.write_text(path.read_text().replace('"barrier_test": ',
                                           '"barrier_test": 1'))
  before = workdir_files(copy)
  with pytest.raises(lottery.LotteryError, match=r"path.json.* damaged"):
    lottery.driver.run(c, copy)
  assert workdir_files(copy) == before


@pytest.mark.parametrize("changes, message", [
    ({"stability.steps": (0, 12)},
     r"^stability.steps: 12 is not below training.steps=12"),
    ({"stability.sources": ("round=1",)},
     r"^stability.source_workdir: set it to the workdir"),
    ({"stability.sources": ("round",)},
     r"^stability.sources: 'round' must be 'dense' or coordinates"),
    ({"stability.sources": ("round=1,seed=1",)},
     r"^stability.sources: 'round=1,seed=1': 'seed' is not a source "
     r"coordinate \(the replicate's seed is taken\)$"),
    ({"stability.sources": ("source=dense,k=0",)},
     r"^stability.sources: 'source=dense,k=0': 'source' is a stability "
     r"pair's coordinate; a pair's copies keep their source's mask"),
    ({"stability.sources": ("round=1,round=2",)},
     r"^stability.sources: 'round=1,round=2' gives 'round' twice$"),
    ({"stability.sources": ("dense", "round=1", " round = 1")},
     r"^stability.sources: must not repeat a source"),
    ({"stability.points": 2}, r"^stability.points: must be an integer in "
                              r"\[3, 10000\]"),
    ({"seeds.data": 2**31 - 1},
     r"^seeds.data: the copies take data seeds up to 2147483648 \(seeds.data"
     r" \+ 2 x seeds.num - 1\), past the limit 2147483647"),
])
def test_bad_config_refused(npz_path, tmp_path, changes, message):
  with pytest.raises(lottery.LotteryError, match=message):
    lottery.driver.run(_config(npz_path, **changes), tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


def test_imp_copies_past_the_seed_limit_refused_before_writing(npz_path,
                                                              tmp_path):
  c = tiny(npz_path, **{"pruning.stability_every": 1, "seeds.data": 2**31 - 1})
  with pytest.raises(lottery.LotteryError, match=(
      r"^pruning.stability_every: the copies take data seeds up to "
      r"2147483648 \(seeds.data \+ 2 x seeds.num - 1\)")):
    lottery.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


def test_missing_source_ticket_refused_before_writing(npz_path, imp_run,
                                                      tmp_path):
  c = _config(npz_path, **{"stability.sources": ("round=7",),
                           "stability.source_workdir": str(imp_run)})
  with pytest.raises(lottery.LotteryError,
                     match=r"^stability.sources: 'round=7' \(seed 0\) names "
                     r"no ticket of .* it has seed in \[0, 1\]; round in "
                     r"\[0, 1\] where seed=0, kind='ticket'; kind in "
                     r"\['ticket'\]$"):
    lottery.driver.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()
  c.stability.source_workdir = str(tmp_path / "nowhere")
  c.stability.sources = ("round=1",)
  with pytest.raises(lottery.LotteryError,
                     match=r"^stability.source_workdir: .* is not a workdir"):
    lottery.driver.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()
  # A folder that holds no run: named as this field's, not the --workdir's.
  (tmp_path / "notes").mkdir()
  c.stability.source_workdir = str(tmp_path / "notes")
  with pytest.raises(lottery.LotteryError) as e:
    lottery.driver.run(c, tmp_path / "wd")
  assert str(e.value) == (f"stability.source_workdir: "
                          f"{str(tmp_path / 'notes')!r} holds no run "
                          f"(config.json missing)")
  assert not (tmp_path / "wd").exists()
  # A stability analysis: its copies are not the tickets analysed.
  (tmp_path / "notes" / "config.json").write_text('{"method": "stability"}')
  with pytest.raises(lottery.LotteryError) as e:
    lottery.driver.run(c, tmp_path / "wd")
  assert str(e.value) == (f"stability.source_workdir: "
                          f"{str(tmp_path / 'notes')!r} is a stability "
                          f"analysis, whose copies are not sparse tickets; "
                          f"give the workdir of the IMP, pruning-at-init or "
                          f"sparse run the tickets are of")
  assert not (tmp_path / "wd").exists()
  # A run whose tickets are masks of another network: another init, model.
  c.stability.source_workdir = str(imp_run)
  c.seeds.init = 3
  with pytest.raises(lottery.LotteryError) as e:
    lottery.driver.run(c, tmp_path / "wd")
  assert str(e.value) == (
      f"stability.source_workdir: its tickets are masks of another network "
      f"(seeds.init 0 there, 3 here); run the analysis with the source "
      f"run's model, seeds.init and data (got {str(imp_run)!r})")
  c.seeds.init, c.model.name = 0, "lenet_300_100"
  with pytest.raises(lottery.LotteryError, match=r"^stability.source_workdir: "
                     r"its tickets are masks of another network \(the model "
                     r"'mlp_tiny' there, 'lenet_300_100' here\); "):
    lottery.driver.run(c, tmp_path / "wd")
  c.model.name, c.data.path = "mlp_tiny", make_npz(tmp_path / "other.npz",
                                                   seed=1)
  with pytest.raises(lottery.LotteryError, match=r"^stability.source_workdir: "
                     r"its tickets are masks of another network \(the data's "
                     r"fingerprint\); "):
    lottery.driver.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()
  # A source whose data's bytes differ (a TFDS dataset relabelled in place
  # keeps its fingerprint): its facts' data_contents.
  c.data.path = npz_path
  copy = tmp_path / "copy"
  shutil.copytree(imp_run, copy)
  facts = json.loads((copy / "facts.json").read_text())
  del facts["_sha256"]
  lottery.checkpoint.write_json(copy / "facts.json", {
      **facts, "data_contents": "sha256:" + "0" * 64})
  c.stability.source_workdir = str(copy)
  with pytest.raises(lottery.LotteryError, match=r"^stability.source_workdir: "
                     r"its tickets are masks of another network \(the data's "
                     r"fingerprint\); "):
    lottery.driver.run(c, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()


def test_a_source_run_changed_mid_run_is_refused_on_resume(npz_path, imp_run,
                                                           tmp_path):
  """A run stopped after a source's first group, whose source workdir is
  then run again (other tickets), would mix the two sources' masks."""
  src = tmp_path / "src"
  shutil.copytree(imp_run, src)
  c = _config(npz_path, **{"stability.sources": ("round=1",),
                           "stability.source_workdir": str(src)})

  class Stop(Exception):
    pass

  def stop(done, _):
    if done.coords == {"source": "round=1", "k": 0}:
      raise Stop
  with pytest.raises(Stop):
    lottery.driver.run(c, tmp_path / "wd", on_group=stop)
  shutil.rmtree(src)
  lottery.run(tiny(npz_path, **{"pruning.rounds": 1, "training.steps": 12,
                                "training.eval_every": 6, "controls": (),
                                "seeds.num": 2, "seeds.init": 0,
                                "training.learning_rate": 0.5}), src)
  with pytest.raises(lottery.LotteryError, match=re.escape(
      "stability.source_workdir: its ticket 'round=1' (seed 0) is not the "
      "mask this run's finished copies at k=0 started from: the source run "
      "changed since this run began; use a new --workdir (or restore the "
      "source run)")):
    lottery.driver.run(c, tmp_path / "wd")
  # Restored, the run goes on.
  shutil.rmtree(src)
  shutil.copytree(imp_run, src)
  assert lottery.driver.run(c, tmp_path / "wd")["finished"]


def test_imp_with_stability_and_level_barriers(npz_path, tmp_path):
  c = tiny(npz_path, **{"pruning.rounds": 2, "training.steps": 12,
                        "training.eval_every": 6, "controls": (),
                        "pruning.rewind_step": 4,
                        "pruning.stability_every": 2,
                        "pruning.level_barrier": True,
                        "pruning.path_points": 4})
  wd = tmp_path / "wd"
  lines = []
  summary = lottery.run(c, wd, log=lines.append)
  rounds = summary["rounds"]
  assert [("stability" in r, "level_barrier_test" in r) for r in rounds] == [
      (True, False), (False, True), (True, True)]
  for r in (0, 2):
    s = rounds[r]["stability"]
    ticket = lottery.load_ticket(wd, r)
    copy = lottery.load_ticket(wd, r, "stability_copy")
    path = json.loads((wd / s["ticket"] / "path.json").read_text())
    assert s["barrier_test"] == stability.barrier(path["test_error"])
    assert path["test_error"][0] == 1.0 - ticket.metrics["test_accuracy"]
    assert path["test_error"][-1] == 1.0 - copy.metrics["test_accuracy"]
    # Same mask, same start (round 0: the rewind point at step 4).
    for x, y in zip(jax.tree.leaves(ticket.mask), jax.tree.leaves(copy.mask)):
      assert np.array_equal(x, y)
    assert copy.metrics["start_step"] == 4
    if r > 0:
      for x, y in zip(jax.tree.leaves(ticket.rewind_params),
                      jax.tree.leaves(copy.rewind_params)):
        assert np.array_equal(x, y)
    # Another data order: the two trained networks differ.
    assert not all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(ticket.trained_params),
        jax.tree.leaves(copy.trained_params)))
  rewind = lottery.load_ticket(wd, 1).rewind_params
  copy0 = lottery.load_ticket(wd, 0, "stability_copy").rewind_params
  for x, y in zip(jax.tree.leaves(rewind), jax.tree.leaves(copy0)):
    # Round 1 starts from the rewind point under its mask; the copy of
    # round 0 from the whole rewind point.
    assert np.array_equal(x[x != 0], y[x != 0])
  assert "barrier" in lines[0] and "level barrier" in lines[1]
  # Resumed: the paths are read back, the summary is the same.
  assert lottery.run(c, wd) == summary
  # A damaged level path is refused before anything is written.
  level = wd / summary["rounds"][1]["ticket"] / "level_path.json"
  level.write_text(level.read_text().replace('"barrier_test": ',
                                             '"barrier_test": 1'))
  before = workdir_files(wd)
  with pytest.raises(lottery.LotteryError, match=r"level_path.json.* damaged"):
    lottery.run(c, wd)
  assert workdir_files(wd) == before


class _DenseBN:
  """Dense then BatchNorm (flax), of any momentum."""

  def __init__(self, momentum):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, train=False):
        x = nn.Dense(3, name="fc")(x)
        return nn.BatchNorm(use_running_average=not train,
                            momentum=momentum, name="bn")(x)

    self.model = Net()
    variables = self.model.init(jax.random.key(0), jnp.ones((2, 5)))
    self.params = variables["params"]
    self.state = {"batch_stats": variables["batch_stats"]}
    self.apply = step_lib.flax_apply(self.model)


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_recomputed_statistics_are_the_mean_of_batch_statistics(momentum):
  net = _DenseBN(momentum)
  xs = np.random.default_rng(1).normal(size=(4, 8, 5)).astype(np.float32)
  got = jax.jit(stability.recompute_statistics, static_argnums=0)(
      net.apply, net.params, net.state, xs)["batch_stats"]["bn"]
  h = xs @ np.asarray(net.params["fc"]["kernel"]) + np.asarray(
      net.params["fc"]["bias"])  # (batches, B, 3)
  np.testing.assert_allclose(got["mean"], h.mean(1).mean(0), rtol=2e-5,
                             atol=1e-6)
  np.testing.assert_allclose(got["var"], h.var(1).mean(0), rtol=2e-5)


def test_a_batchnorm_path_recomputes_statistics_at_every_point():
  net = _DenseBN(0.9)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  b = jax.tree.map(lambda p: p + 0.5, net.params)
  eval_fn = step_lib.make_eval_step(net.apply)
  stats_x = stability.statistics_batches(x, 16)
  assert stats_x.shape == (2, 16, 5)  # The partial last batch is left out.
  path = stability.evaluate_path(eval_fn, net.params, b, net.state, None, x,
                                 y, points=3, apply_fn=net.apply,
                                 stats_x=stats_x)
  from lottery import loop as loop_lib  # pylint: disable=g-import-not-at-top
  sets = loop_lib.eval_batches(x, y, 1000)
  for i, alpha in enumerate(path["alpha"]):
    p = stability.interpolate(net.params, b, np.float32(alpha))
    state = stability.recompute_statistics(net.apply, p, net.state, stats_x)
    m = eval_fn(p, state, *sets)
    assert path["loss"][i] == pytest.approx(float(m["loss"]), rel=1e-5)
  # Without recomputation every point uses the initial statistics: other
  # losses.
  plain = stability.evaluate_path(eval_fn, net.params, b, net.state, None, x,
                                  y, points=3)
  assert plain["loss"] != pytest.approx(path["loss"], rel=1e-3)
  with pytest.raises(lottery.LotteryError, match="^training.batch_size: 64"):
    stability.statistics_batches(x, 64)


@pytest.mark.parametrize("name, shape", [
    ("lenet_300_100", (28, 28, 1)), ("mnist1d_mlp", (40,)),
    ("conv2", (32, 32, 3)),
    pytest.param("vgg11", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("resnet20", (32, 32, 3), marks=pytest.mark.slow),
    ("vit_tiny", (40,))])
def test_every_zoo_input_layer_is_linear_in_alpha(name, shape):
  """The layer a model names takes the input, so its output on the path is
  the ends' outputs combined: the whole network agrees with and without
  `linear_input`."""
  model = lottery.models.get(name, 10)
  x = np.random.default_rng(0).normal(size=(4,) + shape).astype(np.float32)
  init = jax.jit(model.init)  # One compilation for both ends.
  va, vb = (init(jax.random.key(k), x) for k in (0, 1))
  a, b = va["params"], vb["params"]
  state = {k: v for k, v in va.items() if k != "params"}
  layer = stability.input_layer_of(model)

  # Arguments, not constants of the program (XLA folds constants with other
  # kernels).
  @functools.partial(jax.jit, static_argnums=0)
  def out(linear, alpha, a, b, x):
    params = stability.interpolate(a, b, alpha)
    if not linear:
      return model.apply({"params": params, **state}, x)
    with stability.linear_input(layer, a, b, alpha):
      return model.apply({"params": params, **state}, x)
  for alpha in (0.0, 0.3, 1.0):
    want = out(False, np.float32(alpha), a, b, x)
    got = out(True, np.float32(alpha), a, b, x)
    # At the ends the layer's output is exact ((1 - 0) f(x; a) + 0 f(x; b));
    # XLA may still fuse the rest of the two programs differently.
    tol = 1e-5 if alpha in (0.0, 1.0) else 2e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol / 10)


def _conv_path_setup():
  """Conv-2 on 8x8 inputs with BatchNorm-free ends, its eval function and
  evaluation batches."""
  from lottery import loop as loop_lib  # pylint: disable=g-import-not-at-top
  model = lottery.models.get("conv2", 10)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(24, 8, 8, 3)).astype(np.float32)
  y = rng.integers(0, 10, 24).astype(np.int32)
  a, b = (model.init(jax.random.key(k), x[:1])["params"] for k in (0, 1))
  mask = lottery.prune(lottery.make_mask(a), lottery.scores.magnitude(a), 0.5)
  eval_fn = step_lib.make_eval_step(step_lib.flax_apply(model))
  return a, b, mask, x, y, eval_fn, loop_lib.eval_batches(x, y, 1000)


def test_path_batch_picks_one_point_a_step_for_convolutions(npz_path):
  a, _, _, _, _, eval_fn, sets = _conv_path_setup()
  assert stability.path_batch(eval_fn, a, {}, sets) == 1
  exp = lottery.build(tiny(npz_path))
  mlp_sets = lottery.loop.eval_batches(exp.dataset.x_test[:1],
                                       exp.dataset.y_test[:1])
  assert stability.path_batch(step_lib.make_eval_step(exp.apply_fn),
                              exp.init_params, exp.init_model_state,
                              mlp_sets) == 0


def test_path_in_steps_of_points_equals_separate_evaluations():
  """One point a step (`lax.map`), 3 a step (with a remainder) and all at
  once give the same path; one a step equals the points' separate
  evaluations bit for bit. A batch that is not a count is refused."""
  a, b, mask, x, y, eval_fn, sets = _conv_path_setup()
  paths = {k: stability.evaluate_path(eval_fn, a, b, {}, mask, x, y,
                                      points=7, batch=k) for k in (1, 3, 0)}
  one = jax.jit(eval_fn)
  for i, alpha in enumerate(paths[1]["alpha"]):
    m = one(stability.interpolate(a, b, np.float32(alpha), mask), {}, *sets)
    assert paths[1]["error"][i] == 1.0 - float(m["accuracy"])
    assert paths[1]["loss"][i] == float(m["loss"])
  for k in (3, 0):
    assert paths[k]["error"] == paths[1]["error"], k
    assert paths[k]["loss"] == pytest.approx(paths[1]["loss"], rel=1e-5), k
  for bad in (-1, 2.5, True):
    with pytest.raises(lottery.LotteryError, match=(
        rf"^batch: must be a count of points >= 0 \(0: all at once; got "
        rf"{bad!r}\)$")):
      stability.evaluate_path(eval_fn, a, b, {}, mask, x, y, points=7,
                              batch=bad)


_TWO_DEVICES = """
import json, sys
import jax
import lottery
from conftest import tiny
c = tiny(sys.argv[1], method="stability", **{
    "training.steps": 12, "training.eval_every": 6,
    "training.checkpoint_every": 6, "stability.steps": (0, 4),
    "stability.points": 5})
lines = []
progress = lottery.progress.NullProgress()
progress.info = lines.append  # The start-up lines, the mesh's among them.
lottery.driver.run(c, sys.argv[2], progress=progress)
print(json.dumps({"devices": jax.device_count(), "lines": lines}))
"""


@pytest.mark.slow
def test_one_replicate_splits_its_pair_over_two_devices(npz_path, tmp_path):
  """With one replicate on two devices, the copies train one per device
  (the replicate axis sized for the pair, `Stability.stacked`), and the run
  matches one device's within float tolerance."""
  out = run_on_devices(_TWO_DEVICES, npz_path, str(tmp_path / "two"),
                       devices=2)
  assert out["devices"] == 2
  assert any(line.startswith("mesh: replicas=2 data=1 (2 devices")
             for line in out["lines"]), out["lines"]
  lottery.driver.run(_config(npz_path), tmp_path / "one", log=lambda _: None)
  two = lottery.stability.summary(tmp_path / "two")["pairs"]
  one = lottery.stability.summary(tmp_path / "one")["pairs"]
  assert [(p["k"], p["seed"]) for p in two] == [(p["k"], p["seed"])
                                               for p in one]
  for p, q in zip(one, two):
    assert abs(p["barrier_test"] - q["barrier_test"]) <= 0.02
    for copy in (0, 1):
      a = lottery.load_ticket(tmp_path / "one", source="dense", k=p["k"],
                              copy=copy, seed=0)
      b = lottery.load_ticket(tmp_path / "two", source="dense", k=p["k"],
                              copy=copy, seed=0)
      for x, y in zip(jax.tree.leaves(a.trained_params),
                      jax.tree.leaves(b.trained_params)):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_a_source_model_is_compared_as_built():
  """Options at their defaults are the same network as options unset
  ('resnet' at depth 20 is 'resnet20'); another init of the BatchNorm
  scales is not."""
  def cfg(**model):
    c = lottery.base_config()
    c.model.update(model)
    return c

  def same(a, b):
    return (stability._model_description(a)[0] ==
            stability._model_description(b)[0])
  assert same(cfg(name="resnet20"), cfg(name="resnet", depth=20))
  assert same(cfg(name="resnet20", width=16, bn_init="ones"),
              cfg(name="resnet20"))
  assert not same(cfg(name="resnet20", bn_init="uniform"),
                  cfg(name="resnet20"))
  assert not same(cfg(name="resnet20", width=8), cfg(name="resnet20"))


def test_training_differences_name_what_moves_the_weights_up_to_k():
  """A source run trained with another rate (up to the largest k), batch or
  data order reached its step k on other weights (a note names them); other
  steps under a constant rate, evaluation, checkpoints, loop form or fields
  its optimizer does not read do not count."""
  from experiments import cli
  ours = cli.load_config("stability_mnist1d:cnn")  # k up to 1000, Adam.
  source = cli.load_config("mnist1d:cnn")
  assert stability.training_differences(ours, source) == []
  source.training.update(steps=8000, eval_every=250, checkpoint_every=1000,
                         loop="python", momentum=0.9, lr_boundaries=(10,))
  assert stability.training_differences(ours, source) == []
  source.training.update(learning_rate=1e-3, batch_size=60)
  source.seeds.data = 4
  source.data.validation_size = 500  # Trained on the other examples.
  assert stability.training_differences(ours, source) == [
      "training.batch_size 60 there, 100 here",
      "seeds.data 4 there, 0 here",
      "data.validation_size 500 there, 0 here",
      "the learning rates of steps 0..999"]
  # Under a cosine schedule the total steps set every rate.
  cosine = cli.load_config("mnist1d:cnn")
  cosine.training.schedule = "cosine"
  ours.training.schedule = "cosine"
  assert stability.training_differences(ours, cosine) == []
  cosine.training.steps = 8000
  assert stability.training_differences(ours, cosine) == [
      "the learning rates of steps 0..999"]
