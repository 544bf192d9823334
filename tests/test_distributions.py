"""Per-layer densities: exact keep counts, uniform and ERK (against the RigL
code's rule), and a density that keeps no weight of a layer refused."""

import math

import numpy as np
import pytest

import lottery
from lottery import distributions
from lottery import masks

from conftest import quiet
from conftest import tiny

MNIST1D = {"fc1/kernel": (40, 500), "fc2/kernel": (500, 500),
           "out/kernel": (500, 10)}


def test_keep_count_is_the_one_rounding_rule():
  assert distributions.keep_count(0.1, 1000) == 100
  assert distributions.keep_count(0.03, 250_000) == 7500
  # 1 - 0.5 of 3 is 1.5 removed, halves up: 2 removed, 1 kept.
  assert distributions.keep_count(0.5, 3) == 1
  assert distributions.keep_count(0.7, 10) == 7  # 0.3 exact, not 0.30000004
  assert distributions.keep_count(1.0, 7) == 7
  assert distributions.keep_count(0.0, 7) == 0
  for d in (0.2, 0.1, 0.05, 0.03, 0.01):
    for n in (7, 100, 235_200):
      removed = lottery.pruning.num_to_remove(round(1 - d, 10), n)
      assert distributions.keep_count(d, n) == n - removed


def test_uniform_counts():
  assert distributions.uniform(MNIST1D, 0.1) == {
      "fc1/kernel": 2000, "fc2/kernel": 25000, "out/kernel": 500}


def test_erk_hand_checked():
  # Raw fractions 8/16, 10/16 and 8/8; eps = 20 / 26; targets 6.15, 7.69,
  # 6.15: floors 6, 7, 6 and the one weight left to the largest remainder.
  shapes = {"a": (4, 4), "b": (2, 8), "c": (8,)}
  assert distributions.erk(shapes, 0.5) == {"a": 6, "b": 8, "c": 6}


def test_erk_makes_a_layer_dense_and_resolves():
  # The small layer would keep 0.6 x 1002 / 212 > 1 of its weights: dense,
  # and the big one keeps the rest of the 1002.
  shapes = {"big": (100, 100), "small": (10, 2)}
  assert distributions.erk(shapes, 0.1) == {"big": 982, "small": 20}


def _rigl_erk(shapes, density):
  """The RigL code's get_sparsities_erdos_renyi (erk_power_scale 1), in
  floats: per-layer densities."""
  sparsity, dense = 1 - density, set()
  while True:
    divisor = rhs = 0
    raw = {}
    for k, s in shapes.items():
      n = math.prod(s)
      zeros = int(np.floor(sparsity * n))
      if k in dense:
        rhs -= zeros
      else:
        rhs += n - zeros
        raw[k] = sum(s) / n
        divisor += raw[k] * n
    eps = rhs / divisor
    top = max(raw.values())
    if top * eps > 1:
      dense.update(k for k, r in raw.items() if r == top)
    else:
      break
  return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}


@pytest.mark.parametrize("density", [0.2, 0.1, 0.03])
@pytest.mark.parametrize("shapes", [
    MNIST1D,
    {"conv": (3, 3, 3, 16), "s1": (3, 3, 16, 16), "s2": (3, 3, 16, 32),
     "s3": (3, 3, 32, 64), "out": (64, 10)},
    {"fc1": (784, 300), "fc2": (300, 100), "out": (100, 10)}])
def test_erk_matches_the_rigl_code_and_sums_exactly(shapes, density):
  counts = distributions.erk(shapes, density)
  total = sum(math.prod(s) for s in shapes.values())
  assert sum(counts.values()) == distributions.keep_count(density, total)
  ref = _rigl_erk(shapes, density)
  for k, s in shapes.items():
    n = math.prod(s)
    assert 0 <= counts[k] <= n
    # Within the RigL code's own rounding (it floors zeros per layer).
    assert abs(counts[k] - ref[k] * n) <= len(shapes) + 1, k


def test_keep_counts_over_a_mask_and_unknown_name():
  rng = np.random.default_rng(0)
  params = {"fc1": {"kernel": rng.normal(size=(40, 500)),
                    "bias": np.zeros(500)},
            "out": {"kernel": rng.normal(size=(500, 10)),
                    "bias": np.zeros(10)}}
  mask = masks.make_mask(params, (".*kernel",))
  counts = distributions.keep_counts("erk", mask, 0.1)
  assert list(counts) == ["fc1/kernel", "out/kernel"]
  assert sum(counts.values()) == 2500
  pruned = lottery.keep_top(mask, params, counts)
  assert {k: c for k, (c, _) in masks.counts(pruned).items()} == counts
  with pytest.raises(lottery.LotteryError,
                     match=r"^sparse.distribution: unknown distribution"):
    distributions.keep_counts("snip", mask, 0.1)
  with pytest.raises(lottery.LotteryError, match=r"^sparse.densities: "):
    distributions.keep_counts("uniform", mask, 1.5)


@pytest.mark.parametrize("method,overrides,message", [
    ("sparse", {"sparse.densities": (1e-12,), "sparse.methods": ("static",)},
     r"^sparse.densities: 1e-12 keeps no weight of layer '.*' \(\d+ weights, "
     r"distribution '.*'\); use a higher density$"),
    ("pai", {"pai.densities": (1e-12,)},
     r"^pai.densities: 1e-12 keeps no weight of layer '.*' \(\d+ weights, "
     r"pai.scope 'global': none of all \d+ prunable weights\); use a higher "
     r"density$"),
    ("pai", {"pai.densities": (0.005,), "pai.scope": "layerwise"},
     r"^pai.densities: 0.005 keeps no weight of layer '.*' \(\d+ weights, "
     r"pai.scope 'layerwise'\); use a higher density$")])
def test_a_density_that_keeps_no_weight_is_refused_before_writing(
    npz_path, tmp_path, method, overrides, message):
  c = tiny(npz_path, method=method, **overrides)
  with pytest.raises(lottery.LotteryError, match=message):
    lottery.driver.run(c, tmp_path / "wd", log=quiet)
  assert not (tmp_path / "wd").exists()
