"""Random streams and flat keys: compiled key helpers give the eager values,
and a flat key draws exactly what the default key draws."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lottery import masks
from lottery import models
from lottery import rng
from lottery import step

from conftest import compilations

DRAWS = {
    "bits": lambda k, s: jax.random.bits(k, s),
    "uniform": lambda k, s: jax.random.uniform(k, s),
    "normal": lambda k, s: jax.random.normal(k, s),
    "truncated_normal": lambda k, s: jax.random.truncated_normal(k, -2., 2., s),
    "bernoulli": lambda k, s: jax.random.bernoulli(k, 0.3, s),
    "randint": lambda k, s: jax.random.randint(k, s, 0, 7),
}
SHAPES = [(), (0, 3), (4, 6), (3, 3, 4, 5)]


@pytest.mark.slow
def test_flat_key_draws_the_default_keys_bits():
  """Every distribution, ranks 0 to 4, on a split and a folded key: one
  compiled program of default-key draws against one of flat-key draws."""
  def draws(key, flat):
    out = []
    for k in (jax.random.split(key)[1], jax.random.fold_in(key, 7)):
      k = rng.flat(k) if flat else k
      out += [DRAWS[n](k, s) for n in sorted(DRAWS) for s in SHAPES]
    return out
  key = jax.random.key(11)
  want = jax.jit(lambda k: draws(k, False))(key)
  got = jax.jit(lambda k: draws(k, True))(key)
  assert len(want) == len(got) == 2 * len(DRAWS) * len(SHAPES)
  for a, b in zip(want, got):
    assert a.dtype == b.dtype and np.array_equal(a, b), a.shape
  # Outside jit too (each draw its own program): a few.
  for n in ("normal", "bits"):
    assert np.array_equal(DRAWS[n](key, (3, 3, 4, 5)),
                          DRAWS[n](rng.flat(key), (3, 3, 4, 5)))


def test_flat_key_initializes_a_conv_model_exactly():
  model = models.get("conv2", 10)
  x = np.zeros((1, 8, 8, 3), np.float32)
  want = model.init(jax.random.key(3), x)
  got = jax.jit(lambda k: model.init(rng.flat(k), x))(jax.random.key(3))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_compiled_keys_are_the_eager_ones():
  for seed in (0, 5, 2**31 - 1):
    assert np.array_equal(jax.random.key_data(rng.key(seed)),
                          jax.random.key_data(jax.random.key(seed)))
  # Pinned: the values of the first, op-by-op version of `stream`.
  got = [np.asarray(jax.random.key_data(rng.stream(s, u, *i))).tolist()
         for s, u, i in [(0, "reinit", ()), (3, "random_prune", (2,)),
                         (7, "pai_score", (1, 5))]]
  assert got == [[1797259609, 2579123966], [1162771976, 1047151509],
                 [2947918763, 3465472855]]


def test_init_state_compiles_once_and_copies_its_inputs():
  params = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3),
                  "bias": jnp.ones(3)}}
  mask = masks.make_mask(params)
  assert isinstance(mask["a"]["kernel"], np.ndarray)  # Host: no device op.
  tx = step.keep_pruned(optax.adam(1e-2))
  states = []
  with compilations() as events:
    for i in range(3):
      m = {"a": {"kernel": np.arange(6).reshape(2, 3) % 3 != i,
                 "bias": None}}
      states.append(step.init_state(params, tx, mask=m, step=i, seed=i))
  assert len(events) == 1  # One program for every mask, step and seed.
  s = states[2]
  assert np.array_equal(s.params["a"]["kernel"],
                        [[0.0, 1.0, 0.0], [3.0, 4.0, 0.0]])
  assert int(s.step) == 2
  assert np.array_equal(s.rng, jax.random.key_data(jax.random.key(2)))
  # Donating the state leaves the caller's arrays alive.
  jax.jit(lambda st: st, donate_argnums=0)(s)
  assert not params["a"]["bias"].is_deleted()
  assert float(params["a"]["kernel"][1, 2]) == 5.0


def test_a_use_outside_uses_is_keyed_by_its_name():
  """A registered control's name (not one of rng.USES) has its own stream,
  the same on every call."""
  a = jax.random.key_data(rng.stream(0, "my_control", 1))
  assert np.array_equal(a, jax.random.key_data(rng.stream(0, "my_control", 1)))
  for other in [("other_control", 1), ("my_control", 2), ("reinit", 1)]:
    assert not np.array_equal(a, jax.random.key_data(rng.stream(0, *other)))
