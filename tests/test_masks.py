"""Masks and pruning: exact counts, ties, rounding, nesting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery import masks
from lottery import pruning
from lottery import scores
from lottery.errors import LotteryError


def params4():
  return {"a": {"kernel": jnp.array([[0.5, -3.0], [2.0, 0.1]]),
                "bias": jnp.array([9.0, 9.0])},
          "out": {"kernel": jnp.array([1.0, -1.0, 1.0, 4.0])}}


def as_np(mask):
  return {k: None if v is None else np.asarray(v).tolist()
          for k, v in masks.named_leaves(mask).items()}


def test_make_mask_selects_by_fullmatch():
  m = masks.make_mask(params4(), (".*kernel",))
  assert as_np(m) == {"a/bias": None,
                      "a/kernel": [[True, True], [True, True]],
                      "out/kernel": [True, True, True, True]}
  # fullmatch: 'kernel' alone matches no whole path.
  with pytest.raises(LotteryError, match="pruning.prunable"):
    masks.make_mask(params4(), ("kernel",))
  with pytest.raises(LotteryError, match="invalid regex"):
    masks.make_mask(params4(), ("(",))


def test_layerwise_exact_mask():
  p = params4()
  m = pruning.prune(masks.make_mask(p), scores.magnitude(p), 0.5,
                    scope="layerwise")
  assert as_np(m) == {"a/bias": None,
                      "a/kernel": [[False, True], [True, False]],
                      # |1|, |-1|, |1| tie: the earliest two go first.
                      "out/kernel": [False, False, True, True]}
  assert masks.counts(m) == {"a/kernel": (2, 4), "out/kernel": (2, 4)}
  assert masks.density(m) == 0.5


def test_global_ranks_all_layers_together():
  p = params4()
  m = pruning.prune(masks.make_mask(p), scores.magnitude(p), 0.5,
                    scope="global")
  # Survivors' scores: 0.5 3 2 0.1 | 1 1 1 4 -> remove 0.1, 0.5, 1, 1.
  assert as_np(m)["a/kernel"] == [[False, True], [True, False]]
  assert as_np(m)["out/kernel"] == [False, False, True, True]


def test_ties_are_deterministic_by_position():
  p = {"w": {"kernel": jnp.ones((8,))}}
  m = pruning.prune(masks.make_mask(p), scores.magnitude(p), 0.25)
  assert np.asarray(m["w"]["kernel"]).tolist() == [False, False] + [True] * 6


def test_rounding_rule_is_nearest_half_up_on_exact_decimal():
  assert pruning.num_to_remove(0.2, 235200) == 47040  # float gives 47040.000001
  assert pruning.num_to_remove(0.2, 3) == 1  # 0.6 -> 1
  assert pruning.num_to_remove(0.2, 2) == 0  # 0.4 -> 0
  assert pruning.num_to_remove(0.5, 1) == 1  # 0.5 -> 1 (half up)
  assert pruning.num_to_remove(0.1, 1000) == 100
  assert pruning.num_to_remove(0.3, 5) == 2  # 1.5 -> 2


def test_frankle_carbin_lenet_schedule():
  """Weights remaining after k rounds: fc 20%, output 10% (F&C 2019)."""
  shapes = {"fc1": (784, 300), "fc2": (300, 100), "out": (100, 10)}
  p = {k: {"kernel": jnp.ones(s)} for k, s in shapes.items()}
  m = masks.make_mask(p)
  expected = {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 16: 2.9, 18: 1.9}
  key = jax.random.key(0)
  for k in range(1, 19):
    s = scores.random(p, jax.random.fold_in(key, k))
    m = pruning.prune(m, s, 0.2, scope="layerwise",
                      layer_fractions="out/kernel=0.1")
    if k in expected:
      assert round(100 * masks.density(m), 1) == expected[k]
  kept = masks.counts(m)
  assert kept["out/kernel"][0] == 1000 - sum(  # rounded at each round
      [100, 90, 81, 73, 66, 59, 53, 48, 43, 39, 35, 31, 28, 25, 23, 21, 19, 17])


def test_pruned_never_comes_back_and_masks_nest():
  p = params4()
  m = masks.make_mask(p)
  key = jax.random.key(1)
  for r in range(4):
    # Random scores rank pruned weights highly too; they must stay pruned.
    s = scores.random(p, jax.random.fold_in(key, r))
    new = pruning.prune(m, s, 0.3, scope="global")
    for old, nw in zip(jax.tree.leaves(m), jax.tree.leaves(new)):
      assert not np.any(np.asarray(nw) & ~np.asarray(old))
    m = new
  # 8 -> 6 -> 4 -> 3 -> 2 (removing round(0.3 n) each time).
  assert masks.counts(m)["a/kernel"][0] + masks.counts(m)["out/kernel"][0] == 2


def test_layer_fraction_override_in_global_scope():
  p = params4()
  m = pruning.prune(masks.make_mask(p), scores.magnitude(p), 0.5,
                    scope="global", layer_fractions="out/kernel=0.25")
  assert masks.counts(m) == {"a/kernel": (2, 4), "out/kernel": (3, 4)}
  with pytest.raises(LotteryError, match="pruning.layer_fractions"):
    pruning.parse_layer_fractions("out/kernel")
  with pytest.raises(LotteryError, match="pruning.layer_fractions"):
    pruning.parse_layer_fractions("out/kernel=1.5")


def test_random_like_keeps_per_layer_counts():
  p = {"a": {"kernel": jnp.ones((10, 10))}, "b": {"kernel": jnp.ones((5,))}}
  m = pruning.prune(masks.make_mask(p), scores.random(p, jax.random.key(3)),
                    0.7)
  r1 = pruning.random_like(m, jax.random.key(4))
  r2 = pruning.random_like(m, jax.random.key(4))
  assert masks.counts(r1) == masks.counts(m)
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(r1), jax.tree.leaves(r2)))
  assert not np.array_equal(r1["a"]["kernel"], m["a"]["kernel"])


def test_apply_mask_and_compatibility():
  p = params4()
  m = pruning.prune(masks.make_mask(p), scores.magnitude(p), 0.5)
  q = masks.apply_mask(m, p)
  assert np.asarray(q["a"]["kernel"]).tolist() == [[0.0, -3.0], [2.0, 0.0]]
  assert np.asarray(q["a"]["bias"]).tolist() == [9.0, 9.0]
  masks.check_compatible(m, p)
  bad = {**p, "out": {"kernel": jnp.ones((5,))}}
  with pytest.raises(LotteryError, match=r"out/kernel has shape \(4,\)"):
    masks.check_compatible(m, bad)
