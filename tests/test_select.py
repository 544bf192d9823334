"""The one rounding rule (host and device) and the schedules."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery import config as config_lib
from lottery import distributions
from lottery import imp
from lottery import pruning
from lottery import schedules
from lottery import select
from lottery import sparse_updates

# ------------------------------------------------------------ rounding rule


def _half_cases(p: Fraction, limit: int = 2**31 - 1) -> list[int]:
  """n where p * n is exactly on a half (and its neighbours), below limit."""
  if not p or p.denominator % 2:
    return []
  h = p.denominator // 2 * pow(p.numerator, -1, p.denominator) % p.denominator
  out = []
  for x in (h, h + p.denominator, h + 7 * p.denominator):
    if 0 < x and x + 1 <= limit:
      assert p * x % 1 == Fraction(1, 2)
      out += [x - 1, x, x + 1]
  return out


FRACTIONS = [0.0, 0.5, 0.2, 0.1, 0.3, 0.25, 0.75, 0.125, 0.05, 0.001, 1e-9,
             0.123456789, 0.987654321, 0.999999999, 0.9999999999999999,
             0.30000000000000004, 1 / 3, 2 / 3, 0.7, 1e-20,
             Fraction(1, 2), Fraction(3, 8), Fraction(2, 3), Fraction(1),
             *np.random.default_rng(0).random(5).tolist()]


def test_host_and_device_rules_agree_on_many_cases():
  rng = np.random.default_rng(1)
  base = [0, 1, 2, 3, 4, 5, 7, 10, 100, 1000, 235200, 2**24 - 1, 2**24,
          2**24 + 1, 2**30, 2**31 - 3, 2**31 - 2, 2**31 - 1, 999_999_999,
          *rng.integers(0, 2**31 - 1, 30).tolist()]
  jitted = jax.jit(select.counts_on_device)
  ties = 0
  for f in FRACTIONS:
    halves = _half_cases(select.exact(f))
    ties += len(halves) // 3
    n = base + halves
    want = [select.num_to_remove(f, x) for x in n]
    # The rule itself: floor(p n + 1/2) with p exact; a half goes up.
    p = select.exact(f)
    assert want == [math.floor(p * x + Fraction(1, 2)) for x in n]
    for x in halves[1::3]:
      assert select.num_to_remove(f, x) == p * x + Fraction(1, 2)
    got = jitted(select.rate_constants([f] * len(n)), jnp.asarray(n, jnp.int32))
    assert np.asarray(got).tolist() == want, f
    eager = select.device_num_to_remove(f, jnp.asarray(n, jnp.int32))
    assert np.asarray(eager).tolist() == want, f
  assert ties >= 30


def test_device_rule_under_vmap_and_traced_counts():
  n = jnp.asarray([[1, 3, 5, 235200], [2**31 - 1, 0, 7, 10]], jnp.int32)
  got = jax.vmap(jax.jit(lambda x: select.device_num_to_remove(0.5, x)))(n)
  assert np.asarray(got).tolist() == [
      [select.num_to_remove(0.5, int(x)) for x in row] for row in n]
  assert np.asarray(got).tolist()[0][:3] == [1, 2, 3]  # halves go up


def test_rule_pinned_values_and_names():
  assert select.num_to_remove(0.2, 235200) == 47040  # float: 47040.000001
  assert select.num_to_remove(0.5, 1) == 1 and select.num_to_remove(0.5, 3) == 2
  assert select.num_to_remove(0.3, 5) == 2  # 1.5 up
  assert select.num_to_remove(0.7, 10) == 7  # 0.7 exact, not 0.69999...
  assert select.num_to_keep(0.1, 1000) == 100
  assert select.num_to_keep(0.5, 3) == 1  # removes round(1.5) = 2
  assert select.num_to_keep(Fraction(1, 3), 3) == 1
  assert select.round_half_up(Fraction(5, 2)) == 3
  assert select.round_half_up(Fraction(-1, 2)) == 0
  assert select.exact(0.1) == Fraction(1, 10)
  # One rule, reached by every older name.
  assert pruning.num_to_remove is select.num_to_remove
  assert pruning.keep_top_core is select.keep_top_core
  for d in (0.0, 0.03, 0.1, 0.5, 0.7, 1.0):
    for n in (0, 1, 3, 10, 1000, 250_000):
      assert distributions.keep_count(d, n) == select.num_to_keep(d, n)


def test_frankle_carbin_lenet_schedule_by_the_rule():
  """Weights remaining after k rounds of IMP on LeNet-300-100 (fc 20%,
  output 10% per round), as Frankle & Carbin 2019 report them."""
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "out": 100 * 10}
  rates = {"fc1": 0.2, "fc2": 0.2, "out": 0.1}
  expected = {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 16: 2.9, 18: 1.9}
  kept, ceil_kept = dict(sizes), dict(sizes)
  total = sum(sizes.values())
  for k in range(1, 19):
    for name in sizes:
      rate = schedules.round_rate("geometric", rates[name], k)
      kept[name] -= select.num_to_remove(rate, kept[name])
      ceil_kept[name] -= math.ceil(rates[name] * ceil_kept[name])
    if k in expected:
      assert round(100 * sum(kept.values()) / total, 1) == expected[k], k
  # OpenLTH's ceil rule drifts below the paper's figure.
  assert round(100 * sum(ceil_kept.values()) / total, 1) == 1.8


# ---------------------------------------------------------------- schedules


def _old_round_rate(schedule, rate, r):  # imp.round_rate before the move
  if schedule == "geometric":
    return rate
  return float(Fraction(repr(rate)) / (1 - (r - 1) * Fraction(repr(rate))))


def _old_drop_fractions(steps, update_every, drop_fraction, end_fraction):
  t_end = end_fraction * steps
  out = np.zeros((steps - 1) // update_every + 1)
  for j in range(1, len(out)):
    s = j * update_every
    if s < t_end:
      out[j] = drop_fraction / 2 * (1 + math.cos(math.pi * s / t_end))
  return out


def _old_gmp_table(sizes, counts, *, steps, update_every, begin_step,
                   end_step):
  rows = []
  for j in range((steps - 1) // update_every + 1):
    s = j * update_every
    p = min(max(Fraction(s - begin_step, end_step - begin_step), Fraction(0)),
            Fraction(1))
    rows.append([sizes[k] - math.floor((sizes[k] - counts[k]) *
                                       (1 - (1 - p) ** 3) + Fraction(1, 2))
                 for k in counts])
  return np.asarray(rows, np.int32).reshape(-1, len(counts))


def test_schedules_are_the_old_formulas_bit_for_bit():
  assert imp.round_rate is schedules.round_rate
  for schedule in schedules.IMP_SCHEDULES:
    for rate in (0.2, 0.1, 0.01, 0.3, 0.05, 0.123):
      for r in range(1, 8):
        if r * rate >= 1:  # past a linear schedule's end
          continue
        a = schedules.round_rate(schedule, rate, r)
        assert a.hex() == _old_round_rate(schedule, rate, r).hex()
  assert schedules.round_rate("linear", 0.01, 51) == 0.02
  assert config_lib.SCHEDULES == ("geometric", "linear")
  for d in (0.1, 0.03, 0.01, 0.003, 0.5, 0.9):
    for n in (1, 2, 10, 100):
      old = 1.0 - d ** (1.0 / n) if n > 1 else 1.0 - d
      assert schedules.pai_fraction(d, n).hex() == old.hex()
      # n rounds keep d of the weights, up to float rounding.
      assert (1 - schedules.pai_fraction(d, n)) ** n == pytest.approx(d)
  for args in [(1000, 100, 0.3, 0.5), (2000, 10, 0.3, 0.75), (200, 20, 0.5, 1),
               (37, 3, 0.1, 0.3), (5, 1, 0.9, 1.0)]:
    # The old formulas' updates but the one at the last step (none follows
    # training since updates come after the optimizer's), and a 0 row for
    # that step.
    j = (args[0] - 2) // args[1]
    old = np.append(_old_drop_fractions(*args)[:j + 1], 0.0)
    new = schedules.drop_fractions(*args)
    assert new.dtype == old.dtype and new.tobytes() == old.tobytes(), args
    assert sparse_updates.drop_fractions(*args).tobytes() == old.tobytes()
  sizes, counts = {"a": 1000, "b": 10, "c": 7}, {"a": 100, "b": 1, "c": 3}
  for kw in [dict(steps=1000, update_every=100, begin_step=0, end_step=500),
             dict(steps=1000, update_every=10, begin_step=100, end_step=750),
             dict(steps=97, update_every=4, begin_step=8, end_step=40)]:
    j = (kw["steps"] - 2) // kw["update_every"]
    np.testing.assert_array_equal(sparse_updates.gmp_table(sizes, counts, **kw),
                                  _old_gmp_table(sizes, counts, **kw)[:j + 1])


def test_gmp_sparsity_is_the_cubic():
  assert schedules.gmp_sparsity(0, 0, 100) == 0
  assert schedules.gmp_sparsity(50, 0, 100) == Fraction(7, 8)
  assert schedules.gmp_sparsity(100, 0, 100) == 1
  assert schedules.gmp_sparsity(500, 0, 100) == 1
  assert schedules.gmp_sparsity(5, 10, 100) == 0
  assert schedules.cosine_drop_fraction(0, 100.0, 0.3) == pytest.approx(0.3)
  assert schedules.cosine_drop_fraction(50, 100.0, 0.3) == pytest.approx(0.15)
  assert schedules.cosine_drop_fraction(100, 100.0, 0.3) == 0.0
