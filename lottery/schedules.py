"""Sparsity over time: every schedule of the framework's methods, in one place.

  IMP (`lottery.imp`)  round r >= 1 removes `round_rate(schedule, rate, r)`
      of the survivors. 'geometric': `rate` every round, density (1 -
      rate)^r. 'linear': sparsity rises by `rate` of all the prunable weights
      per round, density 1 - r * rate, so round r removes rate / (1 - (r - 1)
      * rate) of the survivors (computed exactly, then as a float).
  PaI (`lottery.pai`)  pruning to density d in n rounds, round k keeps
      d^(k/n): each round removes `pai_fraction(d, n)` = 1 - d^(1/n) of the
      survivors (exactly 1 - d for one round).
  GMP (`lottery.sparse_updates`, Zhu & Gupta 2017)  at step s a leaf's
      sparsity is its final sparsity times `gmp_sparsity(s, begin, end)` = 1
      - (1 - p)^3, p = (s - begin) / (end - begin) clipped to [0, 1], exact.
  RigL / SET (`lottery.sparse_updates`, Evci et al. 2020)  the mask update
      at step s drops `cosine_drop_fraction(s, t_end, alpha)` = alpha / 2 (1 +
      cos(pi s / t_end)) of each leaf's active weights for s < t_end, 0 after
      (`drop_fractions`: the table over the run's updates).

The counts these rates give (how many weights, per leaf) are the one rounding
rule's (`lottery.select`); this module only says which fraction when.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# IMP's schedules (config `pruning.schedule`).
IMP_SCHEDULES = ("geometric", "linear")


def round_rate(schedule: str, rate: float, r: int) -> float:
  """The fraction of the survivors that IMP's round r >= 1 removes.

  'geometric': `rate` every round (density (1 - rate)^r). 'linear': sparsity
  rises by `rate` of all the prunable weights per round (density 1 - r *
  rate), so round r removes rate / (1 - (r - 1) * rate) of the survivors; with
  the one rounding rule each layer's count is within a weight per round of
  the exact target.
  """
  if schedule == "geometric":
    return rate
  return float(Fraction(repr(rate)) / (1 - (r - 1) * Fraction(repr(rate))))


def pai_fraction(density: float, rounds: int) -> float:
  """The fraction of the survivors each of `rounds` PaI rounds removes to
  reach `density`: 1 - density^(1/rounds), so round k keeps density^(k/n);
  exactly 1 - density for one round."""
  return 1.0 - density ** (1.0 / rounds) if rounds > 1 else 1.0 - density


def gmp_sparsity(step: int, begin_step: int, end_step: int) -> Fraction:
  """The share of its final sparsity a leaf has at `step` under Zhu & Gupta's
  cubic schedule: 1 - (1 - p)^3 with p = (step - begin_step) / (end_step -
  begin_step) clipped to [0, 1], exactly."""
  p = min(max(Fraction(step - begin_step, end_step - begin_step), Fraction(0)),
          Fraction(1))
  return 1 - (1 - p) ** 3


def num_updates(steps: int, update_every: int) -> int:
  """How many steps of 0..steps-1 update the mask: s > 0, s % dT == 0, and
  not the last, whose update no training would follow (an update comes
  after its step's optimizer update, `lottery.step.make_train_step`)."""
  return max(steps - 2, 0) // update_every


def cosine_drop_fraction(step: int, t_end: float,
                         drop_fraction: float) -> float:
  """RigL's cosine-annealed drop fraction at `step`: drop_fraction / 2 (1 +
  cos(pi step / t_end)) before t_end, 0.0 from t_end on."""
  if step < t_end:
    return drop_fraction / 2 * (1 + math.cos(math.pi * step / t_end))
  return 0.0


def drop_fractions(steps: int, update_every: int, drop_fraction: float,
                   end_fraction: float) -> np.ndarray:
  """float64 (J + 2,) drop fraction of update j (step j x dT), J =
  `num_updates(steps, update_every)`, t_end = end_fraction x steps; entry 0
  is never used (no update at step 0), entry J + 1 is 0 (the last step,
  where the loop's hook changes nothing)."""
  t_end = end_fraction * steps
  out = np.zeros(num_updates(steps, update_every) + 2)
  for j in range(1, len(out) - 1):
    out[j] = cosine_drop_fraction(j * update_every, t_end, drop_fraction)
  return out
