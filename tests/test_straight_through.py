"""SR-STE (`lottery.straight_through`): one step against a hand computation,
exact N of every M at every step along the reduction axis, pruned weights
that move and come back, and the run-level pieces (mask of the initial
weights, bad input)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import optim
from lottery import step as step_lib
from lottery import straight_through
from lottery import structure


def _linear(params, model_state, x, *, train, rng=None):
  del train, rng
  return x @ params["k"], model_state


def _squared(logits, y):
  # sum(y * (x @ k)^2): its gradient in k, 2 x^T (y * x @ k), depends on
  # the weights it is taken at (W * m, not W).
  return jnp.sum(y * logits ** 2)


def _sgd():
  return optax.chain(optax.sgd(1.0), step_lib.scale_by_learning_rate_arg())


def test_one_step_hand_checked():
  # k: 4 weights in one run of 4 (2:4 along axis 0). The 2 largest |w|
  # (rows 0, 1) are kept: W0 * m0 = [0.5, -0.4, 0, 0]. With x = [1, 1, -4,
  # -4] the forward pass gives x @ (W0 * m0) = 0.1 and the gradient at
  # W0 * m0 is g = 2 * 0.1 * x = [0.2, 0.2, -0.8, -0.8], passed to all four
  # weights (at W0 it would be 2 * (-1.5) * x). The pruned rows also decay:
  #   W1 = W0 - lr * (g + 0.5 * (1 - m0) * W0), lr = 1
  #      = [0.5 - 0.2, -0.4 - 0.2, 0.1 + 0.75, 0.3 + 0.65]
  #      = [0.3, -0.6, 0.85, 0.95],
  # and the new mask keeps rows 2 and 3: both pruned weights came back.
  w0 = np.asarray([[0.5], [-0.4], [0.1], [0.3]], np.float32)
  params = {"k": jnp.asarray(w0)}
  st = straight_through.sr_ste(masks.make_mask(params, ("k",)), "2:4", 0.5)
  m0 = st.mask(params)
  np.testing.assert_array_equal(np.asarray(m0["k"])[:, 0], [1, 1, 0, 0])
  tx = st.optimizer(_sgd())
  state = step_lib.init_state(params, tx, mask=m0)
  # The state: masked params, the whole W0 in the optimizer state.
  np.testing.assert_array_equal(state.params["k"][:, 0],
                                np.float32([0.5, -0.4, 0, 0]))
  np.testing.assert_array_equal(state.opt_state.dense["k"], w0)
  step = jax.jit(step_lib.make_train_step(_linear, tx, loss_fn=_squared,
                                          straight_through=st))
  new, _ = step(state, (jnp.asarray([[1.0, 1.0, -4.0, -4.0]]),
                        jnp.ones((1, 1))), 1.0)
  np.testing.assert_allclose(new.opt_state.dense["k"][:, 0],
                             [0.3, -0.6, 0.85, 0.95], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(new.mask["k"])[:, 0],
                                [0, 0, 1, 1])
  dense = np.asarray(new.opt_state.dense["k"])[:, 0]
  np.testing.assert_array_equal(new.params["k"][:, 0],
                                [0, 0, dense[2], dense[3]])


def _mlp(params, model_state, x, *, train, rng=None):
  del train, rng
  h = jnp.tanh(x @ params["a"]["kernel"] + params["a"]["bias"])
  return h @ params["b"]["kernel"] + params["b"]["bias"], model_state


def _n_m_reference(w, n=2, m=4):
  """N largest |w| of every m consecutive rows (axis 0), in numpy."""
  runs = np.abs(w).T.reshape(w.shape[1], -1, m)
  keep = np.argsort(np.argsort(-runs, axis=-1, kind="stable"), axis=-1) < n
  return keep.reshape(w.shape[1], -1).T


def test_steps_match_a_reference_with_momentum_and_weight_decay():
  # A tanh MLP, 2:4 on both kernels (biases dense), SGD with momentum 0.9
  # and coupled weight decay 0.01 (the framework's 'sgd', as the paper
  # trains), lambda_W 0.05, 12 steps, against a float64 numpy reference of
  # Zhou et al.'s update: the gradient at W * N:M(|W|) for every weight,
  # plus lambda_W * W on the pruned ones, plus weight decay * W, momentum.
  rng = np.random.default_rng(0)
  w = {"a": {"kernel": rng.normal(size=(8, 12)), "bias": rng.normal(size=12)},
       "b": {"kernel": rng.normal(size=(12, 4)), "bias": np.zeros(4)}}
  w = jax.tree.map(lambda a: np.asarray(a, np.float32), w)
  x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 16))
  training = ml_collections.ConfigDict(dict(
      optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=0.01))
  st = straight_through.sr_ste(masks.make_mask(w, (".*kernel",)), "2:4",
                               0.05)
  tx = st.optimizer(optim.make_optimizer(training))
  state = step_lib.init_state(w, tx, mask=st.mask(w))
  step = jax.jit(step_lib.make_train_step(_mlp, tx, straight_through=st))
  ref = jax.tree.map(lambda a: a.astype(np.float64), w)
  velocity = jax.tree.map(np.zeros_like, ref)
  grad = jax.jit(jax.grad(lambda p: step_lib.cross_entropy(
      _mlp(p, {}, x, train=True)[0], y)))
  for _ in range(12):
    state, _ = step(state, (x, y), 0.1)
    keep = {k: _n_m_reference(ref[k]["kernel"]) for k in ref}
    at = {k: {"kernel": np.float32(ref[k]["kernel"] * keep[k]),
              "bias": np.float32(ref[k]["bias"])} for k in ref}
    g = jax.tree.map(lambda a: np.asarray(a, np.float64), grad(at))
    for k in ref:
      for leaf in ("kernel", "bias"):
        d = g[k][leaf] + 0.01 * ref[k][leaf]
        if leaf == "kernel":
          d = d + 0.05 * ~keep[k] * ref[k][leaf]
        velocity[k][leaf] = 0.9 * velocity[k][leaf] + d
        ref[k][leaf] = ref[k][leaf] - 0.1 * velocity[k][leaf]
  for k in ref:
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(state.opt_state.dense[k][leaf],
                                 ref[k][leaf], rtol=1e-5, atol=1e-5)
    keep = _n_m_reference(ref[k]["kernel"])
    np.testing.assert_array_equal(state.mask[k]["kernel"], keep)
    np.testing.assert_array_equal(
        state.params[k]["kernel"],
        np.where(keep, state.opt_state.dense[k]["kernel"], 0))
  # The masks moved: the test reaches pruned weights that come back.
  assert not all(np.array_equal(st.mask(w)[k]["kernel"],
                                state.mask[k]["kernel"]) for k in ref)


def _runs(k, m, axis):
  k = np.moveaxis(np.asarray(k), axis, -1)
  return k.reshape(k.shape[:-1] + (k.shape[-1] // m, m)).sum(axis=-1)


def test_n_of_m_along_the_reduction_axis_at_every_step():
  # A conv net and Adam: at every step the mask keeps exactly 2 of every 4
  # input channels (conv) or inputs (dense), the params are the dense
  # weights on the mask and 0 off it, and the mask changes over training.
  net = models.get("conv2", 10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 4)),
                  jnp.float32)
  y = jnp.arange(8) % 10
  params = net.init(jax.random.key(0), x[:1])["params"]
  dense = masks.make_mask(params, (".*kernel",))
  st = straight_through.sr_ste(dense, "2:4", 2e-4)
  tx = st.optimizer(optax.chain(optax.adam(1.0),
                                step_lib.scale_by_learning_rate_arg()))
  state = step_lib.init_state(params, tx, mask=st.mask(params))
  step = jax.jit(step_lib.make_train_step(step_lib.flax_apply(net), tx,
                                          straight_through=st))
  first, changed = state.mask, 0
  for _ in range(6):
    before = state.mask
    state, _ = step(state, (x, y), 0.05)
    changed += not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(state.mask)))
    for name, m in masks.named_leaves(state.mask).items():
      if m is None:
        continue
      axis = m.ndim - 2
      assert (_runs(m, 4, axis) == 2).all(), name
      if m.shape[-1] % 4 == 0:  # Not along the output axis.
        assert not (_runs(m, 4, m.ndim - 1) == 2).all(), name
    # Every leaf: the params are the dense weights on the mask, 0 off it.
    params = masks.named_leaves(state.params)
    dense_w = masks.named_leaves(state.opt_state.dense)
    for name, m in masks.named_leaves(state.mask).items():
      want = dense_w[name] if m is None else np.where(m, dense_w[name], 0)
      np.testing.assert_array_equal(params[name], want)
  assert changed > 0
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(first), jax.tree.leaves(state.mask)))


@pytest.mark.parametrize("shape", [(8, 3), (3, 3, 8, 5), (12,)])
@pytest.mark.parametrize("n_m", ["2:4", "1:4", "3:4"])
def test_mask_is_n_m_leaves_of_the_magnitudes_with_ties_and_nan(shape, n_m):
  # Integer magnitudes of both signs: many ties (and -0.0 against 0.0);
  # a NaN and infinities. The fast ranking equals the prune's.
  rng = np.random.default_rng(1)
  w = rng.integers(-2, 3, size=shape).astype(np.float32)
  flat = w.reshape(-1)
  flat[0], flat[3], flat[5] = np.nan, np.inf, -np.inf
  flat[np.flatnonzero(flat == 0)[:2]] = -0.0
  params = {"k": jnp.asarray(w)}
  mask = masks.make_mask(params, ("k",))
  st = straight_through.sr_ste(mask, n_m)
  n, m = map(int, n_m.split(":"))
  axis = 0 if len(shape) < 2 else len(shape) - 2
  want, _ = structure.n_m_leaves(((n, m, axis),),
                                 [np.ones(shape, bool)], [np.abs(w)])
  np.testing.assert_array_equal(jax.jit(st.mask)(params)["k"], want[0])


def test_refuses_a_pattern_that_is_not_n_m_or_does_not_divide():
  params = {"k": jnp.zeros((6, 2))}
  mask = masks.make_mask(params, ("k",))
  with pytest.raises(lottery.LotteryError, match=r"^sparse.n_m: must be an "
                     r"N:M pattern such as '2:4' \(got 'neuron'\)$"):
    straight_through.sr_ste(mask, "neuron")
  with pytest.raises(lottery.LotteryError, match=r"^sparse.n_m: '2:4' groups "
                     r"4 weights along axis 0 of k \(shape \(6, 2\)\)"):
    straight_through.sr_ste(mask, "2:4")


def test_refuses_a_bad_decay_and_an_optimizer_it_did_not_build():
  params = {"k": jnp.zeros((4, 1))}
  mask = masks.make_mask(params, ("k",))
  for decay in (-0.1, 1.0, float("nan"), True):
    with pytest.raises(lottery.LotteryError, match=r"^sparse.sr_ste_decay: "
                       r"must be (a number )?in \[0, 1\) \(got "):
      straight_through.sr_ste(mask, "2:4", decay)
  st = straight_through.sr_ste(mask, "2:4")
  state = step_lib.init_state(params, _sgd(), mask=st.mask(params))
  step = step_lib.make_train_step(_linear, _sgd(), loss_fn=_squared,
                                  straight_through=st)
  with pytest.raises(lottery.LotteryError, match=r"^tx: SR-STE's train step "
                     r"needs the optimizer of StraightThrough.optimizer"):
    jax.jit(step)(state, (jnp.ones((1, 4)), jnp.ones((1, 1))), 0.1)


def test_its_optimizer_without_straight_through_is_refused():
  # Else keep_pruned would train the starting mask, silently not SR-STE.
  params = {"k": jnp.asarray([[0.5], [-0.4], [0.1], [0.3]])}
  st = straight_through.sr_ste(masks.make_mask(params, ("k",)), "2:4")
  tx = st.optimizer(_sgd())
  state = step_lib.init_state(params, tx, mask=st.mask(params))
  step = step_lib.make_train_step(_linear, tx, loss_fn=_squared)
  with pytest.raises(lottery.LotteryError, match=r"^straight_through: the "
                     r"optimizer state holds SR-STE's dense weights"):
    jax.jit(step)(state, (jnp.ones((1, 4)), jnp.ones((1, 1))), 0.1)


def test_no_mask_update_beside_it():
  params = {"k": jnp.zeros((4, 1))}
  st = straight_through.sr_ste(masks.make_mask(params, ("k",)), "2:4")
  with pytest.raises(ValueError, match="straight_through"):
    step_lib.make_train_step(_linear, st.optimizer(_sgd()),
                             straight_through=st,
                             mask_update=lambda s, g, k: s.mask,
                             update_every=1)
