"""The loop around the train step: pruned weights stay exactly zero, batches
are reproducible, loop forms agree, evaluation is exact."""

import re

import jax
import numpy as np
import pytest

from lottery import config as config_lib
from lottery import loop
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import scores
from lottery import step
from lottery.errors import Diverged, LotteryError

from conftest import compilations


def _setup(optimizer, form="scan", **training):
  t = config_lib.base_config().training
  t.update(optimizer=optimizer, learning_rate=0.05, **training)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  mask = masks.make_mask(params, (".*kernel", ".*bias"))
  mask = pruning.prune(mask, scores.random(params, jax.random.key(1)), 0.6)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  data = loop.put_data(x, y, x[:10], y[:10])
  return lp, tx, data, params, mask


def _state(tx, params, mask=None):
  return step.init_state(params, tx, mask=mask)


@pytest.mark.parametrize("optimizer,extra", [
    ("sgd", dict(momentum=0.9, weight_decay=1e-2)),
    ("sgd", dict(momentum=0.9, nesterov=True)),
    ("adam", dict(weight_decay=1e-2)),
    ("adamw", dict(weight_decay=0.1)),
])
def test_pruned_weights_stay_exactly_zero(optimizer, extra):
  lp, tx, data, params, mask = _setup(optimizer, **extra)
  state = _state(tx, params, mask)
  # Large values where pruned in the starting weights: only the step's own
  # masking can keep them at zero.
  state = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
  idx = loop.batch_indices(64, 16, 0, 0, 30)
  state, losses = lp.run(state, data, idx, np.full(30, 0.05, np.float32))
  assert np.all(np.isfinite(losses))
  for name, m in masks.named_leaves(mask).items():
    p = np.asarray(masks.named_leaves(state.params)[name])
    assert np.all(p[~np.asarray(m)] == 0.0), name
    assert np.any(p[np.asarray(m)] != 0.0), name
  assert int(state.step) == 30


def test_masked_and_unmasked_differ_only_by_mask():
  """The same step with an all-None mask trains the dense network."""
  lp, tx, data, params, mask = _setup("adam")
  idx = loop.batch_indices(64, 16, 0, 0, 5)
  lrs = np.full(5, 0.05, np.float32)
  s1, _ = lp.run(_state(tx, params), data, idx, lrs)
  s2, _ = lp.run(_state(tx, params, mask), data, idx, lrs)
  p1 = np.asarray(s1.params["fc1"]["kernel"])
  p2 = np.asarray(s2.params["fc1"]["kernel"])
  assert np.all(p1 != 0.0)
  assert np.array_equal(p2 == 0.0, ~np.asarray(mask["fc1"]["kernel"]))


@pytest.mark.parametrize("form", ["unroll", "python"])
def test_loop_forms_agree(form):
  lp, tx, data, params, mask = _setup("adam")
  other, *_ = _setup("adam", form=form)
  idx = loop.batch_indices(64, 16, 0, 0, 12)
  lrs = np.linspace(0.05, 0.01, 12).astype(np.float32)
  s1, l1 = lp.run(_state(tx, params, mask), data, idx, lrs)
  s2, l2 = other.run(_state(tx, params, mask), data, idx, lrs)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(s2.step) == 12


def test_batch_indices_pure_function_of_seed_and_step():
  a = loop.batch_indices(50, 8, 3, 0, 20)
  b = loop.batch_indices(50, 8, 3, 7, 20)
  assert np.array_equal(a[7:], b)
  # Each epoch (6 full batches of 8 from 50) is a permutation, no repeats.
  assert len(set(a[:6].reshape(-1).tolist())) == 48
  assert not np.array_equal(loop.batch_indices(50, 8, 4, 0, 20), a)


@pytest.mark.parametrize("form", ["scan", "python"])
def test_host_gathered_batches_match_on_device(form):
  lp, tx, data, params, mask = _setup("sgd", form=form, momentum=0.9)
  host = loop.put_data(np.asarray(data.x), np.asarray(data.y),
                       np.asarray(data.x)[:10], np.asarray(data.y)[:10],
                       on_device=False)
  idx = loop.batch_indices(64, 16, 0, 0, 10)
  lrs = np.full(10, 0.05, np.float32)
  s1, l1 = lp.run(_state(tx, params, mask), data, idx, lrs)
  s2, l2 = lp.run(_state(tx, params, mask), host, idx, lrs)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(s1.params["out"]["kernel"],
                             s2.params["out"]["kernel"], rtol=1e-5)


def test_evaluate_counts_padded_test_set_exactly():
  lp, tx, _, params, _ = _setup("adam")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(23, 6)).astype(np.float32)
  y = rng.integers(0, 3, 23).astype(np.int32)
  data = loop.put_data(x, y, x, y, eval_batch=10)  # 3 batches, 7 padded
  ev = lp.evaluate(_state(tx, params), data)
  logits = models.get("mlp_tiny", 3).apply({"params": params}, x)
  assert ev["accuracy"] == pytest.approx(
      float(np.mean(np.argmax(logits, -1) == y)), abs=1e-7)


def test_schedules():
  t = config_lib.base_config().training
  t.update(schedule="step", learning_rate=1.0, lr_boundaries=(3, 5),
           lr_decay=0.1, steps=8)
  lrs = optim.learning_rates(optim.make_schedule(t), 0, 8)
  np.testing.assert_allclose(lrs, [1, 1, 1, .1, .1, .01, .01, .01], rtol=1e-6)
  t.update(schedule="constant")
  assert optim.learning_rates(optim.make_schedule(t), 2, 5).shape == (3,)
  t.update(schedule="cosine", warmup_steps=2)
  lrs = optim.learning_rates(optim.make_schedule(t), 0, 8)
  assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0)


def test_diverging_loss_is_an_error():
  lp, tx, data, params, mask = _setup("sgd")
  state = _state(tx, params, mask)
  with pytest.raises(Exception, match="^training.learning_rate: loss"):
    loop.train(lp, state, data, stop=40,
               lr_fn=lambda a, b: np.full(b - a, 1e4, np.float32),
               batch_size=16, data_seed=0, eval_every=10)


def test_a_last_update_that_diverges_is_caught_by_the_test_loss():
  """Each training loss is computed before its step's update, so the last
  step's update is seen only by the evaluation after it: its test loss is
  checked like the training losses."""
  lp, tx, data, params, mask = _setup("sgd")
  lrs = lambda a, b: np.where(np.arange(a, b) == 19, 1e4, 1e-3).astype(
      np.float32)
  with pytest.raises(Diverged) as e:
    loop.train(lp, _state(tx, params, mask), data, stop=20, lr_fn=lrs,
               batch_size=16, data_seed=0, eval_every=10)
  assert re.fullmatch(
      r"training.learning_rate: test loss diverged after step 20 \(\S+, over "
      r"1000 times the starting training loss \S+; try a lower learning rate "
      r"or weight decay\)", str(e.value)), str(e.value)
  assert e.value.replicate is None
  # The same steps with the last rate as the others train.
  _, history, _ = loop.train(
      lp, _state(tx, params, mask), data, stop=20, batch_size=16,
      lr_fn=lambda a, b: np.full(b - a, 1e-3, np.float32), data_seed=0,
      eval_every=10)
  assert [h["step"] for h in history] == [10, 20]


def test_a_diverged_replicate_is_named():
  with pytest.raises(Diverged) as e:
    loop._check_loss(np.array([[2.0, 2.0], [2.0, np.inf]]),  # pylint: disable=protected-access
                     np.array([2.0, 2.0]), 5)
  assert str(e.value) == (
      "training.learning_rate: loss became non-finite at step 6 (replicate 1) "
      "(try a lower learning rate or weight decay)")
  assert e.value.replicate == 1
  assert str(e.value.within("round 2 ticket seed 1")) == (
      "training.learning_rate: loss became non-finite at step 6 in round 2 "
      "ticket seed 1 (try a lower learning rate or weight decay)")
  with pytest.raises(Diverged, match=(
      r"^training.learning_rate: loss diverged at step 3 \(2\.5e\+03, over "
      r"1000 times its starting value 2; try")):
    loop._check_loss(np.array([1.0, 2.0, 2500.0]), np.array(2.0), 1)  # pylint: disable=protected-access
  # The limit is 1000 x the starting loss, and at least 1000.
  loop._check_loss(np.array([999.0]), np.array(0.1), 0)  # pylint: disable=protected-access


@pytest.mark.parametrize("form", ["scan", "unroll", "python"])
def test_evaluation_inside_the_chunk_matches_a_separate_call(form):
  """`run_and_evaluate` (the evaluation inside the scan's program) gives the
  state of `run` and the numbers of `evaluate`, bit for bit, test and
  validation sets, one state or stacked replicates; chunks with and without
  an evaluation share one compiled program."""
  lp, tx, data, params, mask = _setup("adam", form=form)
  data = loop.put_data(np.asarray(data.x), np.asarray(data.y),
                       np.asarray(data.x)[:10], np.asarray(data.y)[:10],
                       x_val=np.asarray(data.x)[10:33],
                       y_val=np.asarray(data.y)[10:33], eval_batch=8)
  idx = loop.batch_indices(64, 16, 0, 0, 6)
  lrs = np.linspace(0.05, 0.01, 6).astype(np.float32)
  s1, l1 = lp.run(_state(tx, params, mask), data, idx, lrs)
  ev1 = lp.evaluate(s1, data)
  state = _state(tx, params, mask)
  with compilations() as events:
    s2, l2, ev2 = lp.run_and_evaluate(state, data, idx, lrs)
  # The program `run` compiled serves the chunk with an evaluation too.
  assert events == []
  assert set(ev2) == {"loss", "accuracy", "val_loss", "val_accuracy"}
  assert ev2 == ev1
  assert np.array_equal(l1, l2)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    assert np.array_equal(a, b)
  # Replicates: the vmapped evaluation inside the vmapped scan.
  stacked = loop.stack_states([_state(tx, params, mask),
                               _state(tx, params, mask)])
  two = np.stack([idx, loop.batch_indices(64, 16, 1, 0, 6)], axis=1)
  s3, _, ev3 = lp.run_and_evaluate(stacked, data, two, lrs)
  assert ev3 == lp.evaluate(s3, data)
  assert ev3["accuracy"][0] == ev1["accuracy"]
  assert ev3["loss"][0] == pytest.approx(ev1["loss"], rel=1e-6)


def test_train_history_is_the_separate_evaluations():
  """`train`'s history, evaluated inside the chunks' programs, equals a
  hand-written loop of `run` and `evaluate` on the same chunks; an
  evaluation at every second chunk boundary still compiles the scan once."""
  lp, tx, data, params, mask = _setup("adam")
  lr_fn = lambda a, b: np.linspace(0.05, 0.01, 20)[a:b].astype(np.float32)
  state = _state(tx, params, mask)
  with compilations() as events:
    _, history, _ = loop.train(lp, state, data, stop=20, lr_fn=lr_fn,
                               batch_size=16, data_seed=3, eval_every=10,
                               checkpoint_every=5,
                               on_checkpoint=lambda *a: None)
  # One program for the four chunks, with or without an evaluation: no
  # separate evaluation, no second scan.
  assert len(events) == 1, len(events)
  other, *_ = _setup("adam")
  state, expected = _state(tx, params, mask), []
  for a in range(0, 20, 5):
    state, losses = other.run(state, data,
                              loop.batch_indices(64, 16, 3, a, a + 5),
                              lr_fn(a, a + 5))
    if (a + 5) % 10 == 0:
      expected.append({"step": a + 5, "train_loss": float(losses.mean()),
                       **other.evaluate(state, data)})
  assert history == expected


# --- batch indices per call --------------------------------------------------


def _reference_batch_indices(n, batch_size, seed, start, stop):
  """loop.batch_indices before it worked an epoch slice at a time."""
  per_epoch = n // batch_size
  out = np.empty((stop - start, batch_size), np.int32)
  perms = {}
  for i, s in enumerate(range(start, stop)):
    epoch, pos = divmod(s, per_epoch)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    out[i] = perms[epoch][pos * batch_size:(pos + 1) * batch_size]
  return out


def test_batch_indices_of_a_chunk_are_the_slice_of_the_full_array():
  full = loop.batch_indices(50, 8, 3, 0, 40)  # 6 batches per epoch
  assert np.array_equal(full, _reference_batch_indices(50, 8, 3, 0, 40))
  for a, b in [(0, 1), (5, 6), (5, 7), (6, 12), (11, 40), (17, 29)]:
    assert np.array_equal(loop.batch_indices(50, 8, 3, a, b), full[a:b])
  assert loop.batch_indices(50, 8, 3, 4, 4).shape == (0, 8)
  with pytest.raises(LotteryError) as e:
    loop.batch_indices(50, 64, 3, 0, 4)
  assert str(e.value) == ("batch_size: must be at most the 50 training "
                          "examples (got 64)")


def _reference_chunk_bounds(start, stop, every, extra=()):
  """loop.chunk_bounds before `iter_bounds` (a set of every boundary)."""
  b = {start, stop}
  for e in every:
    if e:
      b.update(range((start // e + 1) * e, stop, e))
  b.update(s for s in extra if start < s < stop)
  return sorted(b)


def test_iter_bounds_is_chunk_bounds():
  for args in [(0, 20, [10, 5], ()), (3, 47, [10, 0, 7], (4, 9, 50, 3, 20)),
               (0, 5, [], ()), (7, 8, [100], (7,)), (5, 5, [2], ()),
               (0, 30, [10, 10], (10, 10, 15))]:
    want = _reference_chunk_bounds(*args)
    assert loop.chunk_bounds(*args) == want
    assert list(loop.iter_bounds(*args)) == want
  # Lazily: a billion steps of one-step chunks are never all stored.
  bounds = loop.iter_bounds(0, 10**9, [1])
  assert [next(bounds) for _ in range(3)] == [0, 1, 2]


def _train_setup(form):
  t = config_lib.base_config().training
  t.update(optimizer="adam", learning_rate=0.05)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  mask = pruning.prune(masks.make_mask(params),
                       scores.random(params, jax.random.key(1)), 0.5)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  data = loop.put_data(x, y, x[:10], y[:10])
  return lp, lambda: step.init_state(params, tx, mask=mask), data


@pytest.mark.parametrize("form", ["scan", "python"])
def test_chunks_split_into_calls_train_bit_identically(form, monkeypatch):
  """A chunk run as calls of at most MAX_CALL_INDICES indices (here 6 steps
  of 16: 6, 6, 6, 1) trains exactly as one call, and reports the same."""
  lr_fn = lambda a, b: np.linspace(0.05, 0.01, 19)[a:b].astype(np.float32)
  kw = dict(stop=19, lr_fn=lr_fn, batch_size=16, data_seed=3, eval_every=19)
  lp, state, data = _train_setup(form)
  s1, h1, _ = loop.train(lp, state(), data, **kw)
  monkeypatch.setattr(loop, "MAX_CALL_INDICES", 6 * 16)
  reached = []
  s2, h2, _ = loop.train(lp, state(), data, on_chunk=reached.append, **kw)
  assert reached == [6, 12, 18, 19]
  assert h1 == h2
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    assert np.array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_on_decays_the_matched_parameters_only(optimizer):
  """training.weight_decay_on (RigL's code decays kernels only): at zero
  gradients the kernel moves by the decay, the bias not at all; the default
  ('.*',) decays both, and a pattern matching nothing is refused."""
  t = config_lib.base_config().training
  t.update(optimizer=optimizer, weight_decay=0.5)
  params = {"fc": {"kernel": np.full((2, 3), 2.0, np.float32),
                  "bias": np.full(3, 2.0, np.float32)}}
  zeros = jax.tree.map(np.zeros_like, params)

  def moved(on):
    t.weight_decay_on = on
    tx = optim.make_optimizer(t)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, learning_rate=0.1))
    u, _ = update(zeros, tx.init(params), params)
    return {k: bool(np.all(np.asarray(v) != 0)) for k, v in u["fc"].items()}

  assert moved((".*kernel",)) == {"kernel": True, "bias": False}
  assert moved((".*",)) == {"kernel": True, "bias": True}
  with pytest.raises(LotteryError, match=r"^training.weight_decay_on: "
                     r"patterns \('conv.\*',\) match no parameter "
                     r"\(parameters: fc/bias, fc/kernel\)$"):
    moved(("conv.*",))


def _same(a, b) -> bool:
  return all(np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name,shape,options,form", [
    ("mlp_tiny", (6,), {}, "scan"),
    ("mlp_tiny", (6,), {}, "unroll"),
    ("mlp_tiny", (6,), {}, "python"),
    pytest.param("resnet", (8, 8, 3), {"depth": 8, "width": 4}, "scan",
                 marks=pytest.mark.slow),  # BatchNorm.
    pytest.param("resnet", (8, 8, 3), {"depth": 8, "width": 4}, "python",
                 marks=pytest.mark.slow),
])
def test_unrolled_replicates_are_their_single_runs_bit_for_bit(
    name, shape, options, form):
  # On the CPU 'auto' unrolls: each replicate of the stacked scan computes
  # what its single run computes, state, losses and evaluation alike.
  assert loop.replica_form() == "unroll"
  rng = np.random.default_rng(0)
  x = rng.normal(size=(48,) + shape).astype(np.float32)
  y = rng.integers(0, 3, 48).astype(np.int32)
  model = models.get(name, 3, **options)
  t = config_lib.base_config().training
  t.update(optimizer="sgd", learning_rate=0.05, momentum=0.9)
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), form=form)
  data = loop.put_data(x, y, x[:20], y[:20])
  starts = []
  for i in range(2):
    variables = dict(model.init(jax.random.key(i), x[:1]))
    params = variables.pop("params")
    mask = pruning.prune(masks.make_mask(params), scores.magnitude(params),
                         0.5)
    starts.append((params, mask, variables))
  fresh = lambda i: step.init_state(starts[i][0], tx, mask=starts[i][1],
                                    model_state=starts[i][2], seed=i)
  idx = [loop.batch_indices(48, 8, i, 0, 7) for i in range(2)]
  lrs = np.full(7, 0.05, np.float32)
  singles = [lp.run_and_evaluate(fresh(i), data, idx[i], lrs)
             for i in range(2)]
  stacked = loop.stack_states([fresh(0), fresh(1)])
  state, losses, metrics = lp.run_and_evaluate(stacked, data,
                                               np.stack(idx, 1), lrs)
  # The stacked state is donated, as in the vmapped form: freed once split.
  assert all(a.is_deleted() for a in jax.tree.leaves(stacked))
  for i, (s, l, m) in enumerate(singles):
    assert _same(loop.unstack(state.replace(step=None), i),
                 s.replace(step=None)), i
    np.testing.assert_array_equal(losses[:, i], l)
    assert {k: v[i] for k, v in metrics.items()} == m
  if name != "mlp_tiny" or form != "scan":
    return
  # Vmapped, the same replicates agree up to float reassociation only (its
  # differences grow over the steps).
  vm = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn), replicas="vmap")
  v_state, _ = vm.run(loop.stack_states([fresh(0), fresh(1)]), data,
                      np.stack(idx, 1), lrs)
  for a, b in zip(jax.tree.leaves(v_state.params),
                  jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=2e-3)


def test_replica_form_is_checked():
  assert loop.replica_form("vmap") == "vmap"
  with pytest.raises(LotteryError, match="training.replicas: must be one of"):
    loop.replica_form("pmap")
  with pytest.raises(LotteryError, match="runs on one device"):
    loop.replica_form("unroll", mesh=object())
