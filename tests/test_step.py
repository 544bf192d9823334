"""The public train step: keep_pruned on any optax optimizer (linen and NNX),
model state, per-step keys, and a mask that changes inside the compiled loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lottery
from lottery import loop
from lottery import masks
from lottery import models
from lottery import step
from lottery.errors import LotteryError

from conftest import mlp_tiny_params
from conftest import with_leaf


def _data(n=64, dim=6, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = rng.integers(0, classes, n).astype(np.int32)
  return x, y


def _half_mask(params, seed=1):
  mask = lottery.make_mask(params, (".*kernel",))
  return lottery.prune(mask, jax.tree.map(
      lambda p: jax.random.uniform(jax.random.key(seed), p.shape), params),
                       0.5)


@pytest.mark.parametrize("tx", [
    optax.adam(1e-2),
    optax.adamw(1e-2, weight_decay=0.5),
    optax.sgd(0.1, momentum=0.9),
    optax.sgd(0.1, momentum=0.9, nesterov=True),
], ids=["adam", "adamw", "sgd_momentum", "nesterov"])
def test_keep_pruned_wraps_plain_optax_and_traces_once(tx):
  x, y = _data()
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  tx = lottery.keep_pruned(tx)
  traces = []

  @jax.jit
  def user_step(params, opt_state, mask, xb, yb):
    traces.append(1)
    def loss(p):
      return step.cross_entropy(model.apply({"params": p}, xb), yb)
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
    return optax.apply_updates(params, updates), opt_state

  for seed in (1, 2, 3):  # three different masks, one trace
    mask = _half_mask(params, seed)
    # Unmasked starting weights: only keep_pruned makes pruned ones 0.
    p, s = params, tx.init(params)
    for _ in range(5):
      p, s = user_step(p, s, mask, x, y)
    k, m = np.asarray(p["fc1"]["kernel"]), np.asarray(mask["fc1"]["kernel"])
    assert np.all(k[~m] == 0.0) and np.all(k[m] != 0.0)
    assert np.any(np.asarray(p["fc1"]["bias"]) != 0.0)  # not prunable
  assert len(traces) == 1


def test_keep_pruned_on_nnx_state():
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.fc1 = nnx.Linear(6, 16, rngs=rngs)
      self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(jax.nn.relu(self.fc1(x)))

  x, y = _data()
  model = Net(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  mask = lottery.make_mask(params)
  assert masks.prunable_names(mask) == ["fc1/kernel", "out/kernel"]
  mask = lottery.prune(mask, jax.tree.map(jnp.abs, params), 0.5)
  assert lottery.density(mask) == 0.5
  tx = lottery.keep_pruned(optax.adam(1e-2))
  opt_state = tx.init(params)
  graphdef = nnx.graphdef(model)

  @jax.jit
  def train_step(params, opt_state, mask):
    def loss(p):
      logits = nnx.merge(graphdef, p)(x)
      return step.cross_entropy(logits, y)
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(3):
    params, opt_state = train_step(params, opt_state, mask)
  k = np.asarray(params["fc1"]["kernel"].value)
  m = np.asarray(mask["fc1"]["kernel"].value)
  assert np.all(k[~m] == 0.0) and np.all(k[m] != 0.0)


def test_learning_rate_argument_matches_optimizer_built_at_that_rate():
  x, y = _data()
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  apply_fn = step.flax_apply(model)
  ours = optax.chain(optax.adam(1.0), step.scale_by_learning_rate_arg())
  theirs = optax.adam(0.03)
  s1 = step.init_state(params, ours)
  s2 = step.init_state(params, theirs)
  f1 = jax.jit(step.make_train_step(apply_fn, ours))
  f2 = jax.jit(step.make_train_step(apply_fn, theirs))
  for _ in range(4):
    s1, _ = f1(s1, (x, y), jnp.float32(0.03))
    s2, _ = f2(s2, (x, y), jnp.float32(1.0))
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(a, b)


class _BNDropNet(nn.Module):
  """Dense + BatchNorm + dropout: model state and per-step randomness."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16, name="fc1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
    return nn.Dense(3, name="out")(x)


def _bn_setup():
  x, y = _data()
  model = _BNDropNet()
  variables = model.init(jax.random.key(0), x[:1])
  params = variables["params"]
  model_state = {"batch_stats": variables["batch_stats"]}
  tx = optax.chain(optax.sgd(1.0, momentum=0.9),
                   step.scale_by_learning_rate_arg())
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx),
                 step.make_eval_step(apply_fn))
  mask = _half_mask(params)
  state = step.init_state(params, tx, mask=mask, model_state=model_state,
                          seed=7)
  return lp, state, loop.put_data(x, y, x, y), model, params, model_state


def test_model_state_is_trained_and_used_in_eval():
  lp, state, data, model, _, ms0 = _bn_setup()
  idx = loop.batch_indices(64, 16, 7, 0, 6)
  state, losses = lp.run(state, data, idx, np.full(6, 0.05, np.float32))
  assert np.all(np.isfinite(losses))
  mean0 = np.asarray(ms0["batch_stats"]["bn"]["mean"])
  mean = np.asarray(state.model_state["batch_stats"]["bn"]["mean"])
  assert not np.allclose(mean, mean0)  # updated in training
  # Eval mode uses the running statistics: the same logits as a direct
  # apply with train=False (no dropout, no batch statistics).
  ev = lp.evaluate(state, data)
  logits = model.apply({"params": state.params, **state.model_state},
                       data.test[0][0], train=False)
  acc = float(np.mean(np.argmax(logits, -1) == np.asarray(data.test[1][0])))
  assert ev["accuracy"] == pytest.approx(acc, abs=1e-7)
  # Model state is never pruned: no mask over it.
  assert "batch_stats" not in lottery.make_mask(state.params)


def test_resumed_steps_are_bit_identical_with_dropout():
  """Dropout keys come from (seed, step): 10 steps in one go equal 4 + 6
  steps with the state taken to the host and back in between."""
  lp, state, data, *_ = _bn_setup()
  idx = loop.batch_indices(64, 16, 7, 0, 10)
  lrs = np.full(10, 0.05, np.float32)
  copy = jax.device_get(state)
  full, _ = lp.run(state, data, idx, lrs)
  half, _ = lp.run(jax.tree.map(jnp.asarray, copy), data, idx[:4], lrs[:4])
  half = jax.tree.map(jnp.asarray, jax.device_get(half))
  half, _ = lp.run(half, data, idx[4:], lrs[4:])
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    np.testing.assert_array_equal(a, b)


def test_mask_update_hook_inside_the_compiled_loop():
  """Every 3 steps the hook drops the kept weight of smallest |w| and grows
  the pruned weight of largest dense |grad|, per kernel: the mask changes
  inside one compiled scan, grown weights start from 0 with a reset
  optimizer state, the kept count holds, and nothing recompiles."""
  x, y = _data()
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  mask = _half_mask(params)
  calls = []
  seen = {}

  def swap_one(state, grads, key):
    del key
    calls.append(1)  # counts traces, not executions
    def leaf(m, p, g):
      if m is None:
        return None
      flat_m, flat_p, flat_g = m.ravel(), p.ravel(), g.ravel()
      drop = jnp.argmin(jnp.where(flat_m, jnp.abs(flat_p), jnp.inf))
      grow = jnp.argmax(jnp.where(flat_m, -jnp.inf, jnp.abs(flat_g)))
      return flat_m.at[drop].set(False).at[grow].set(True).reshape(m.shape)
    new = jax.tree.map(leaf, state.mask, state.params, grads,
                       is_leaf=lambda v: v is None)
    seen["grads_dense"] = grads  # traced: checked below by shape only
    return new

  tx = optax.chain(optax.adam(1.0), step.scale_by_learning_rate_arg())
  apply_fn = step.flax_apply(model)
  lp = loop.Loop(step.make_train_step(apply_fn, tx, mask_update=swap_one,
                                      update_every=3),
                 step.make_eval_step(apply_fn))
  data = loop.put_data(x, y, x[:10], y[:10])
  counts0 = masks.counts(mask)
  idx = loop.batch_indices(64, 16, 0, 0, 10)
  lrs = np.full(10, 0.01, np.float32)
  state = step.init_state(params, tx, mask=mask)
  # Steps 0..2: no update yet; the update happens at step 3.
  s3, _ = lp.run(state, data, idx[:3], lrs[:3])
  # Stale moments everywhere (as a weight dropped earlier would have): the
  # update must reset them for the grown weight only.
  s3 = s3.replace(opt_state=optax.tree_map_params(
      tx, lambda v: jnp.ones_like(v) if v.dtype == jnp.float32 else v,
      s3.opt_state))
  before = jax.device_get(s3)
  s4, _ = lp.run(s3, data, idx[3:4], lrs[3:4])
  after = jax.device_get(s4)
  m0 = np.asarray(before.mask["fc1"]["kernel"])
  m1 = np.asarray(after.mask["fc1"]["kernel"])
  grown = m1 & ~m0
  dropped = m0 & ~m1
  assert grown.sum() == 1 and dropped.sum() == 1
  assert masks.counts(after.mask) == counts0
  # The update follows step 3's optimizer step: the grown weight ends it at
  # 0 with zeroed Adam moments; kept weights keep their history.
  k = np.asarray(after.params["fc1"]["kernel"])
  assert k[grown][0] == 0.0 and np.all(k[~m1] == 0.0)
  adam = after.opt_state[0][0]
  mu = np.asarray(adam.mu["fc1"]["kernel"])
  nu = np.asarray(adam.nu["fc1"]["kernel"])
  assert mu[grown][0] == 0.0 and nu[grown][0] == 0.0
  assert np.all(mu[m1 & m0] != 0.0)
  # Its first update, at step 4 (Adam's count 5), is lr * (0.1 g / (1 -
  # 0.9^5)) / sqrt(0.001 g^2 / (1 - 0.999^5)), whatever g; with the stale
  # moments it would be about lr * 1.
  s5, _ = lp.run(s4, data, idx[4:5], lrs[4:5])
  k5 = np.asarray(jax.device_get(s5).params["fc1"]["kernel"])
  expected = 0.01 * (0.1 / (1 - 0.9**5)) / np.sqrt(0.001 / (1 - 0.999**5))
  assert abs(k5[grown][0]) == pytest.approx(expected, rel=1e-4)
  # More updates, same compiled function: the hook was traced for the scan
  # of 3 steps and the scan of 1 step only (two chunk lengths), never again.
  n = len(calls)
  s, _ = lp.run(s4, data, idx[4:7], lrs[4:7])
  s, _ = lp.run(s, data, idx[7:8], lrs[7:8])
  assert len(calls) == n
  assert not np.array_equal(np.asarray(s.mask["fc1"]["kernel"]), m1)
  assert masks.counts(s.mask) == counts0
  # Evaluations: after a chunk ending in a plain step (inside its scan) and
  # after one ending in the update (called apart), as `evaluate` gives them.
  for a, b in ((8, 9), (9, 10)):
    s, _, ev = lp.run_and_evaluate(s, data, idx[a:b], lrs[a:b])
    assert int(s.step) == b
    assert ev == lp.evaluate(s, data)


# --- bad masks where they enter ---------------------------------------------


def _bad_masks():
  p = mlp_tiny_params()
  m = masks.make_mask(p)
  kernel = np.ones((6, 32), bool)
  return {
      "other_model": (
          masks.make_mask(mlp_tiny_params(dim=40)),
          "mask: leaf 'fc1/kernel' has shape (40, 32), params have (6, 32)"),
      "missing": (
          {"out": m["out"]},
          "mask: leaves differ from those of params (missing ['fc1/bias', "
          "'fc1/kernel'])"),
      "extra": (
          {**m, "head": {"kernel": kernel}},
          "mask: leaves differ from those of params (unexpected "
          "['head/kernel'])"),
      "transposed": (
          with_leaf(m, "fc1/kernel", kernel.T),
          "mask: leaf 'fc1/kernel' has shape (32, 6), params have (6, 32)"),
      "broadcastable": (
          with_leaf(m, "fc1/kernel", np.ones((1, 32), bool)),
          "mask: leaf 'fc1/kernel' has shape (1, 32), params have (6, 32)"),
      "float": (
          with_leaf(m, "fc1/kernel", np.ones((6, 32), np.float32)),
          "mask: leaf 'fc1/kernel' has dtype float32, must be bool"),
      "int": (
          with_leaf(m, "out/kernel", jnp.ones((32, 3), jnp.int32)),
          "mask: leaf 'out/kernel' has dtype int32, must be bool"),
      "list": (
          [kernel, kernel],
          "mask: must have the pytree structure of params (a bool array or "
          "None per leaf, e.g. from lottery.make_mask), got a list of 2 "
          "where params are a dict with keys ['fc1', 'out']"),
      "scalar": (
          True,
          "mask: must have the pytree structure of params (a bool array or "
          "None per leaf, e.g. from lottery.make_mask), got bool True where "
          "params are a dict with keys ['fc1', 'out']"),
  }


BAD_MASKS = list(_bad_masks())


@pytest.mark.parametrize("case", BAD_MASKS)
def test_keep_pruned_update_refuses_bad_masks(case):
  mask, message = _bad_masks()[case]
  p = mlp_tiny_params()
  tx = lottery.keep_pruned(optax.adam(1e-2))
  state = tx.init(p)
  with pytest.raises(LotteryError) as e:
    tx.update(p, state, p, mask=mask)
  assert str(e.value) == message
  # Under jit too, where it is found when traced (shapes and dtypes); a
  # scalar is then a traced array.
  with pytest.raises(LotteryError) as e:
    jax.jit(lambda m: tx.update(p, state, p, mask=m))(mask)
  if case == "scalar":
    message = message.replace("bool True", "an array of shape ()")
  assert str(e.value) == message


@pytest.mark.parametrize("case", BAD_MASKS)
def test_init_state_and_apply_mask_refuse_bad_masks(case):
  mask, message = _bad_masks()[case]
  p = mlp_tiny_params()
  with pytest.raises(LotteryError) as e:
    step.init_state(p, optax.adam(1e-2), mask=mask)
  assert str(e.value) == message
  with pytest.raises(LotteryError) as e:
    masks.apply_mask(mask, p)
  # apply_mask's second argument is `tree`.
  assert str(e.value) == message.replace("params have", "the tree has") \
      .replace("params are", "the tree is").replace("params", "the tree")


def test_keep_pruned_refuses_a_non_optimizer_and_a_mask_without_params():
  with pytest.raises(LotteryError) as e:
    lottery.keep_pruned(5)
  assert str(e.value) == ("tx: must be an optax GradientTransformation, e.g. "
                          "optax.adam(1e-3) (got int 5)")
  p = mlp_tiny_params()
  tx = lottery.keep_pruned(optax.sgd(0.1))
  with pytest.raises(LotteryError, match=r"^params: keep_pruned's update"):
    tx.update(p, tx.init(p), mask=masks.make_mask(p))


def test_masks_with_none_leaves_and_subtrees_stay_allowed():
  p = mlp_tiny_params()
  m = masks.make_mask(p)  # None for the biases
  tx = lottery.keep_pruned(optax.sgd(0.1))
  tx.update(p, tx.init(p), p, mask=m)
  # None standing for a whole subtree: not prunable.
  sub = {"fc1": None, "out": m["out"]}
  tx.update(p, tx.init(p), p, mask=sub)
  q = masks.apply_mask(sub, p)
  assert np.array_equal(q["fc1"]["kernel"], p["fc1"]["kernel"])
  step.init_state(p, tx, mask=sub)
  masks.check_mask(None, p)  # no mask: dense


def test_mask_check_runs_when_traced_not_at_every_step(monkeypatch):
  """The check reads shapes and dtypes when the step is traced: a compiled
  step runs it once, however many steps it takes."""
  calls = []
  real = masks.check_mask
  monkeypatch.setattr(masks, "check_mask",
                      lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  p = mlp_tiny_params()
  m = masks.make_mask(p)
  tx = lottery.keep_pruned(optax.sgd(0.1))

  @jax.jit
  def one(params, opt_state, mask):
    updates, opt_state = tx.update(params, opt_state, params, mask=mask)
    return optax.apply_updates(params, updates), opt_state

  s = tx.init(p)
  one(p, s, m)
  traced = len(calls)
  assert traced >= 1
  for _ in range(5):
    p, s = one(p, s, m)
  assert len(calls) == traced


def test_label_smoothing_is_the_hand_computed_smoothed_cross_entropy():
  x, y = _data()
  model = models.get("mlp_tiny", 3)
  params = model.init(jax.random.key(0), x[:1])["params"]
  apply_fn = step.flax_apply(model)
  state = step.init_state(params, optax.sgd(0.1))
  fn = jax.jit(step.make_train_step(apply_fn, optax.sgd(0.1),
                                    loss_fn=step.train_loss(0.1)))
  _, metrics = fn(state, (x[:16], y[:16]), 0.1)
  logits = np.asarray(model.apply({"params": params}, x[:16]), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full((16, 3), 0.1 / 3)
  targets[np.arange(16), y[:16]] += 0.9
  want = -(targets * logp).sum(-1).mean()
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-6)
  # At 0 the loss is plain cross-entropy, the same function (program).
  assert step.train_loss(0.0) is step.cross_entropy
