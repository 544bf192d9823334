"""SR-STE (`lottery.straight_through`): one step against a hand computation,
exact N of every M at every step along the reduction axis, pruned weights
that move and come back, and the run-level pieces (mask of the initial
weights, bad input)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import step as step_lib
from lottery import straight_through


def _linear(params, model_state, x, *, train, rng=None):
  del train, rng
  return x @ params["k"], model_state


def _weighted_sum(logits, y):
  # The gradient of sum(x @ k * y) in k is x^T y: known by hand.
  return jnp.sum(logits * y)


def _sgd():
  return optax.chain(optax.sgd(1.0), step_lib.scale_by_learning_rate_arg())


def test_one_step_hand_checked():
  # k: 4 weights in one run of 4 (2:4 along axis 0). The 2 largest |w|
  # (rows 0, 1) are kept; the gradient x^T y = [1, 2, -3, -4] reaches all
  # four; the pruned rows 2, 3 also decay by lambda * w. With lr 0.1:
  #   W1 = W0 - 0.1 * (g + 0.5 * (1 - m) * W0)
  #      = [0.4, -0.6, 0.1 + 0.295, 0.3 + 0.385] = [0.4, -0.6, 0.395, 0.685]
  # and the new mask keeps rows 1 and 3: a pruned weight came back.
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
  step = jax.jit(step_lib.make_train_step(_linear, tx, loss_fn=_weighted_sum,
                                          straight_through=st))
  x = jnp.asarray([[1.0, 2.0, -3.0, -4.0]])
  new, _ = step(state, (x, jnp.ones((1, 1))), 0.1)
  g = np.asarray([[1.0], [2.0], [-3.0], [-4.0]], np.float32)
  m = np.asarray(m0["k"])
  want = w0 + (-np.where(m, g, g + np.float32(0.5) * w0)) * np.float32(0.1)
  np.testing.assert_allclose(want[:, 0], [0.4, -0.6, 0.395, 0.685],
                             rtol=1e-6)
  np.testing.assert_array_equal(new.opt_state.dense["k"], want)
  np.testing.assert_array_equal(np.asarray(new.mask["k"])[:, 0],
                                [0, 1, 0, 1])
  np.testing.assert_array_equal(new.params["k"][:, 0],
                                [0, want[1, 0], 0, want[3, 0]])


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
    for m, p, w in zip(jax.tree.leaves(state.mask),
                       jax.tree.leaves(masks.apply_mask(
                           state.mask, state.params)),
                       jax.tree.leaves(masks.apply_mask(
                           state.mask, state.opt_state.dense))):
      np.testing.assert_array_equal(p, w)
    for m, p in zip(jax.tree.leaves(state.mask), [
        state.params[k]["kernel"] for k in sorted(state.params)]):
      assert (np.asarray(p)[~np.asarray(m)] == 0).all()
  assert changed > 0
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(first), jax.tree.leaves(state.mask)))


def test_refuses_a_pattern_that_is_not_n_m_or_does_not_divide():
  params = {"k": jnp.zeros((6, 2))}
  mask = masks.make_mask(params, ("k",))
  with pytest.raises(lottery.LotteryError, match=r"^sparse.n_m: must be an "
                     r"N:M pattern such as '2:4' \(got 'neuron'\)$"):
    straight_through.sr_ste(mask, "neuron")
  with pytest.raises(lottery.LotteryError, match=r"^sparse.n_m: '2:4' groups "
                     r"4 weights along axis 0 of k \(shape \(6, 2\)\)"):
    straight_through.sr_ste(mask, "2:4")


def test_no_mask_update_beside_it():
  params = {"k": jnp.zeros((4, 1))}
  st = straight_through.sr_ste(masks.make_mask(params, ("k",)), "2:4")
  with pytest.raises(ValueError, match="straight_through"):
    step_lib.make_train_step(_linear, st.optimizer(_sgd()),
                             straight_through=st,
                             mask_update=lambda s, g, k: s.mask,
                             update_every=1)
