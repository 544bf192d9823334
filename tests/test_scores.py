"""Scores of pruning at init against hand computations: SNIP's |g w|, GraSP's
w (H g) against the explicit Hessian, SynFlow's conservation law, the one
registry IMP and pruning at init share, and one compilation for 100 rounds."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import masks
from lottery import pai
from lottery import pruning
from lottery import scores


class _Net(nn.Module):
  """A bias-free ReLU MLP (or with biases)."""
  widths: tuple = (6, 5, 3)
  bias: bool = False

  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(self.widths):
      x = nn.Dense(w, use_bias=self.bias, name=f"fc{i}")(x)
      if i < len(self.widths) - 1:
        x = nn.relu(x)
    return x


def _setup(bias=False, widths=(6, 5, 3), seed=0):
  model = _Net(widths, bias)
  x = jax.random.normal(jax.random.key(seed + 1), (8, 4))
  y = jnp.arange(8) % widths[-1]
  params = model.init(jax.random.key(seed), x)["params"]
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  return apply_fn, params, (x, y)


def _close(a, b, rtol=1e-5, atol=1e-7):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol,
                               atol=atol)


def test_snip_is_abs_grad_times_weight_by_hand():
  # One linear layer: dL/dW = x^T (softmax(xW) - onehot(y)) / B.
  apply_fn, params, (x, y) = _setup(widths=(3,))
  w = np.asarray(params["fc0"]["kernel"], np.float64)
  xn = np.asarray(x, np.float64)
  z = xn @ w
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g = xn.T @ (p - np.eye(3)[np.asarray(y)]) / len(y)
  s = jax.jit(lambda p: scores.compute("snip", apply_fn, p, None, (x, y),
                                       jax.random.key(0)))(params)
  np.testing.assert_allclose(s["fc0"]["kernel"], np.abs(g * w), rtol=1e-5)


@pytest.mark.slow
def test_grasp_is_weight_times_hessian_gradient_product():
  apply_fn, params, batch = _setup()
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  t = scores.GRASP_TEMPERATURE

  def loss(v):
    logits = apply_fn(unravel(v), batch[0]) / t
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), batch[1]])

  hg = jax.jit(lambda v: jax.hessian(loss)(v) @ jax.grad(loss)(v))(flat)
  s = scores.compute("grasp", apply_fn, params, None, batch,
                     jax.random.key(0))
  np.testing.assert_allclose(jax.flatten_util.ravel_pytree(s)[0], flat * hg,
                             rtol=2e-4, atol=1e-12)


def test_grasp_products_run_over_the_kept_prunable_weights_only():
  """As the authors' and Synaptic-Flow's code: g and Hg over the kept
  kernels; a bias or a pruned weight adds no term to Hg."""
  apply_fn, params, batch = _setup(bias=True, widths=(3, 2))
  mask = masks.make_mask(params, (".*kernel",))
  mask["fc0"]["kernel"][0] = False
  masked = masks.apply_mask(mask, params)
  flat, unravel = jax.flatten_util.ravel_pytree(masked)
  kept = jax.flatten_util.ravel_pytree(jax.tree.map(
      lambda m, v: jnp.zeros_like(v) if m is None else m.astype(v.dtype),
      mask, params, is_leaf=lambda v: v is None))[0]
  t = scores.GRASP_TEMPERATURE

  def loss(v):
    logits = apply_fn(unravel(v), batch[0]) / t
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), batch[1]])

  hg = jax.hessian(loss)(flat) @ (jax.grad(loss)(flat) * kept)
  s = jax.jit(lambda p: scores.compute("grasp", apply_fn, p, mask, batch,
                                       jax.random.key(0)))(params)
  got = jax.flatten_util.ravel_pytree(s)[0]
  np.testing.assert_allclose(got, flat * hg, rtol=2e-4, atol=1e-12)
  # Over every parameter (biases and the pruned row included) it differs.
  full = jax.hessian(loss)(flat) @ jax.grad(loss)(flat)
  assert not np.allclose(got, flat * full, rtol=2e-4, atol=1e-12)


def test_grasp_removes_the_papers_highest_scores():
  """The paper removes the highest S = -w Hg: pruning on w Hg removes
  exactly those (a quarter of the weights, globally)."""
  apply_fn, params, batch = _setup()
  mask = masks.make_mask(params, (".*kernel",))
  s = scores.compute("grasp", apply_fn, params, mask, batch,
                     jax.random.key(0))
  new = pruning.prune(mask, s, 0.25, scope="global")
  flat_s = np.concatenate([np.ravel(v) for v in jax.tree.leaves(s)])
  flat_m = np.concatenate([np.ravel(v) for v in jax.tree.leaves(new)])
  paper = -flat_s
  removed = np.sort(np.argsort(-paper, kind="stable")[:(~flat_m).sum()])
  assert (~flat_m).sum() == round(0.25 * flat_s.size)
  np.testing.assert_array_equal(np.flatnonzero(~flat_m), removed)


@pytest.mark.parametrize("kept", [1.0, 0.5])
def test_synflow_conservation_every_layer_sums_to_r(kept):
  """Tanaka et al. Theorem 1: on a bias-free ReLU net, each layer's scores
  sum to R = sum of the outputs on the all-ones input (|w| weights), also
  on a pruned network."""
  apply_fn, params, batch = _setup(widths=(7, 6, 5, 3))
  mask = masks.make_mask(params, (".*kernel",))
  if kept < 1:
    mask = pruning.prune(mask, scores.random(params, jax.random.key(3)),
                         1 - kept, scope="global")
  s = jax.jit(lambda p, m: scores.compute("synflow", apply_fn, p, m, batch,
                                          jax.random.key(0)))(params, mask)
  w = masks.apply_mask(mask, params)
  r = float(jnp.sum(apply_fn(jax.tree.map(jnp.abs, w), jnp.ones((1, 4)))))
  sums = [float(jnp.sum(s[f"fc{i}"]["kernel"])) for i in range(4)]
  assert r > 0
  np.testing.assert_allclose(sums, [r] * 4, rtol=1e-5)
  # Scores of the pruned weights are 0 (their |w| is 0).
  for (n, m), v in zip(masks.named_leaves(mask).items(),
                       masks.named_leaves(s).values()):
    assert not np.any(np.asarray(v)[~np.asarray(m)]), n


def test_synflow_rescaled_flow_is_the_flow_times_one_power_of_two():
  """The overflow fallback divides each kernel by a power of two: on a
  bias-free net every score is the plain one times the same power of two,
  bit for bit. A network whose output is +inf at the given weights and
  finite at smaller ones stands for one whose R overflows."""
  apply_fn, params, batch = _setup(widths=(7, 6, 5, 3))
  params = jax.tree.map(lambda w: w * 3.0, params)
  big = float(jnp.max(jnp.abs(params["fc0"]["kernel"])))

  def overflowing(p, x):
    # +inf added to the output while fc0's largest |w| is the given one
    # (the rescaled pass divides it by 2 or more); no gradient flows
    # through it, so only R changes.
    inf = jnp.where(jax.lax.stop_gradient(jnp.max(p["fc0"]["kernel"])) >
                    big / 2, jnp.inf, 0.0)
    return apply_fn(p, x) + inf

  plain, scaled = (scores.compute("synflow", fn, params, None, batch,
                                  jax.random.key(0))
                   for fn in (apply_fn, overflowing))
  a = np.concatenate([np.ravel(v) for v in jax.tree.leaves(plain)])
  b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(scaled)])
  ratio = a[a > 0][0] / b[a > 0][0]
  assert ratio != 1 and math.log2(ratio) == round(math.log2(ratio))
  np.testing.assert_array_equal(a, b * ratio)


@pytest.mark.slow
def test_synflow_deep_net_that_overflows_float32_gets_finite_scores():
  apply_fn, params, batch = _setup(widths=(64,) * 30 + (3,))
  params = jax.tree.map(lambda w: w * 8.0, params)
  r = jax.jit(lambda p: jnp.sum(apply_fn(jax.tree.map(jnp.abs, p),
                                           jnp.ones((1, 4)))))(params)
  assert not np.isfinite(r)  # 30 layers of gain ~50 each: past 3e38.
  s = jax.jit(lambda p: scores.compute("synflow", apply_fn, p, None, batch,
                                       jax.random.key(0)))(params)
  leaves = [np.asarray(v) for v in jax.tree.leaves(s)]
  assert all(np.all(np.isfinite(v)) for v in leaves)
  assert all(np.any(v > 0) for v in leaves)


def test_magnitude_and_random_through_compute_match_imps_functions():
  apply_fn, params, batch = _setup()
  key = jax.random.key(5)
  mask = masks.make_mask(params, (".*kernel",))
  _close(scores.compute("magnitude", apply_fn, params, mask, batch, key),
         scores.get("magnitude")(params))
  _close(scores.compute("random", apply_fn, params, None, batch, key),
         scores.get("random")(params, key))


def test_one_registry_imp_refuses_model_aware_scores():
  assert scores.names() == ["magnitude", "random"]
  assert {"snip", "grasp", "synflow", "magnitude", "random"} <= set(
      scores.all_names())
  with pytest.raises(lottery.LotteryError,
                     match=r"^pruning.score: 'snip' needs the model"):
    scores.get("snip")
  with pytest.raises(lottery.LotteryError,
                     match=r"^pai.methods: unknown score, must be one of"):
    scores.compute("nope", None, {}, None, None, None)
  c = lottery.base_config()
  c.pruning.score = "synflow"  # Registered, but it needs data: named so.
  with pytest.raises(lottery.LotteryError, match=r"^pruning.score: 'synflow' "
                     r"needs the model and a batch, a score for pruning at "
                     r"initialization \(pai.methods\); scores of weights "
                     r"alone are \['magnitude', 'random'\]"):
    lottery.config.validate(c)
  c.pruning.score = "synflo"
  with pytest.raises(lottery.LotteryError, match=r"^pruning.score: must be "
                     r"one of \['magnitude', 'random'\]"):
    lottery.config.validate(c)


def test_a_users_score_registers_once_and_serves_pai(request):
  traces = []

  @scores.register("neg_magnitude", data=True)
  def neg_magnitude(apply_fn, params, mask, batch, key):
    traces.append(1)  # Runs once per trace, not per round.
    return jax.tree.map(lambda w: -jnp.abs(w), params)

  request.addfinalizer(lambda: scores.unregister("neg_magnitude"))
  assert "neg_magnitude" in scores.all_names()
  assert "neg_magnitude" not in scores.names()
  apply_fn, params, batch = _setup()
  mask = masks.make_mask(params, (".*kernel",))
  s = scores.compute("neg_magnitude", apply_fn, params, mask, batch, None)
  _close(s, jax.tree.map(lambda w: -jnp.abs(w), params))
  assert traces == [1]


class _Exp:
  """The pieces of an Experiment that `pai.prune_at_init` reads."""

  def __init__(self, model, params):
    self.dense_mask = masks.make_mask(params, (".*kernel",))
    self.apply_fn = lottery.step.flax_apply(model)


def test_hundred_rounds_compile_once_and_follow_the_schedule(request):
  traces = []

  @scores.register("counted_synflow", data=True)
  def counted(apply_fn, params, mask, batch, key):
    traces.append(1)
    return scores.synflow(apply_fn, params, mask, batch, key)

  request.addfinalizer(lambda: scores.unregister("counted_synflow"))
  model = _Net((40, 30, 3))
  _, params, batch = _setup(widths=(40, 30, 3))
  exp = _Exp(model, params)
  kw = dict(rounds=100, scope="global")
  m1 = pai.prune_at_init(exp, "counted_synflow", 0.05, params, {}, batch,
                         jax.random.key(0), **kw)
  params2 = model.init(jax.random.key(9), batch[0])["params"]
  pai.prune_at_init(exp, "counted_synflow", 0.05, params2, {}, batch,
                    jax.random.key(1), **kw)
  # The fori_loop body is traced once (synflow's lax.cond traces its flow
  # twice inside it): one compilation for 100 rounds and for both inits.
  assert len(traces) == 1
  # Exact counts: 100 rounds of the rounding rule at 1 - 0.05^(1/100).
  total = sum(t for _, t in masks.counts(m1).values())
  kept, rate = total, 1 - 0.05 ** (1 / 100)
  for _ in range(100):
    kept -= pruning.num_to_remove(rate, kept)
  assert sum(k for k, _ in masks.counts(m1).values()) == kept
  assert abs(kept - 0.05 * total) <= 50


@pytest.mark.slow
def test_one_round_is_the_one_shot_count_and_layerwise_is_per_layer():
  model = _Net((40, 30, 3))
  _, params, batch = _setup(widths=(40, 30, 3))
  exp = _Exp(model, params)
  sizes = {n: t for n, (_, t) in masks.counts(exp.dense_mask).items()}
  total = sum(sizes.values())
  for method in ("snip", "grasp", "random"):
    m = pai.prune_at_init(exp, method, 0.1, params, {}, batch,
                          jax.random.key(0))
    assert sum(k for k, _ in masks.counts(m).values()) == (
        total - pruning.num_to_remove(0.9, total)), method
  m = pai.prune_at_init(exp, "snip", 0.1, params, {}, batch,
                        jax.random.key(0), scope="layerwise")
  assert {n: k for n, (k, _) in masks.counts(m).items()} == {
      n: t - pruning.num_to_remove(0.9, t) for n, t in sizes.items()}
  # Inverting magnitude keeps exactly the smallest weights.
  m = pai.prune_at_init(exp, "magnitude", 0.1, params, {}, batch,
                        jax.random.key(0), scope="layerwise", invert=True)
  w = np.abs(np.asarray(params["fc0"]["kernel"])).ravel()
  kept = np.asarray(m["fc0"]["kernel"]).ravel()
  assert w[kept].max() < w[~kept].min()
