"""Per-layer densities: how many weights each prunable layer keeps.

A distribution turns an overall target density into exact keep counts per
prunable leaf, `{path: count}`, the form `lottery.pruning.keep_top` takes, so
any method (sparse training, pruning at initialization, random masks) can use
it. Which leaves are sparse is the mask's business (`pruning.prunable`
patterns); the others stay dense and are not counted.

  uniform  every prunable leaf keeps `density` of its weights.
  erk      Erdos-Renyi-Kernel (Evci et al. 2020): leaf l keeps a fraction
           eps * (sum of its dims) / (product of its dims), eps solved so
           that the leaves together keep `density` of their weights; a leaf
           whose fraction would exceed 1 is made dense and eps re-solved over
           the others (the RigL code's loop, `get_sparsities_erdos_renyi`).

Rounding. A leaf of n weights kept at density d keeps n - round((1 - d) n)
weights: the framework's one rule (`select.num_to_keep`: remove round(p n),
halves up, with p at its exact decimal value), applied to the sparsity p =
1 - d taken exactly (so density 0.1 of 1000 weights keeps exactly 100). ERK
solves eps in exact rational arithmetic; its real-valued per-leaf targets are
turned into counts by largest remainders (ties to the earlier leaf in tree
order), so the total is exactly the uniform rule applied to all prunable
weights together. The RigL code instead floors each layer's zeros
(`get_n_zeros`), so its total drifts by up to a weight per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction

import numpy as np

from lottery import masks as masks_lib
from lottery import select
from lottery.errors import LotteryError
from lottery.registry import Registry

# {path: shape} of the prunable leaves -> (density) -> {path: keep count}
DistributionFn = Callable[[Mapping[str, tuple[int, ...]], float],
                          dict[str, int]]
_DISTRIBUTIONS = Registry("distribution", "sparse.distribution")
register = _DISTRIBUTIONS.register
unregister = _DISTRIBUTIONS.unregister
names = _DISTRIBUTIONS.names
get = _DISTRIBUTIONS.get


def _exact(density: float) -> Fraction:
  """`density` at its exact decimal value, checked to be in [0, 1]."""
  if isinstance(density, bool) or not isinstance(density, (int, float)) or \
      not 0 <= density <= 1:
    raise LotteryError(f"sparse.densities: must be numbers in [0, 1] (got "
                       f"{density!r})")
  return select.exact(density)


def keep_count(density: float, n: int) -> int:
  """Weights kept of `n` at `density`: n - round((1 - density) n), halves
  up on the removed count (the one rounding rule, `select.num_to_keep`),
  exactly."""
  return select.num_to_keep(_exact(density), n)


@register("uniform")
def uniform(shapes: Mapping[str, tuple[int, ...]], density: float
            ) -> dict[str, int]:
  """Every leaf keeps `keep_count(density, its size)`."""
  return {k: keep_count(density, math.prod(s)) for k, s in shapes.items()}


@register("erk")
def erk(shapes: Mapping[str, tuple[int, ...]], density: float
        ) -> dict[str, int]:
  """Erdos-Renyi-Kernel counts; their sum is `keep_count(density, total)`.

  Raw fraction of a leaf: (sum of its dims) / (product of its dims) (for a
  Dense kernel (n_in + n_out) / (n_in n_out); for a conv kernel the kernel's
  spatial dims count too). A 1-D leaf (a bias) has raw fraction 1 and is made
  dense first unless eps < 1.
  """
  sizes = {k: math.prod(s) for k, s in shapes.items()}
  target = keep_count(density, sum(sizes.values()))
  raw = {k: Fraction(sum(s), max(sizes[k], 1)) for k, s in shapes.items()}
  dense: set[str] = set()
  while True:
    sparse = [k for k in shapes if k not in dense]
    if not sparse:
      break
    rest = target - sum(sizes[k] for k in dense)
    eps = Fraction(rest) / sum(raw[k] * sizes[k] for k in sparse)
    top = max(raw[k] for k in sparse)
    if eps * top <= 1:
      break
    # As in the RigL code: the leaves of the largest raw fraction go dense.
    dense.update(k for k in sparse if raw[k] == top)
  counts = {k: sizes[k] for k in dense}
  if sparse:
    want = {k: eps * raw[k] * sizes[k] for k in sparse}
    floors = {k: math.floor(v) for k, v in want.items()}
    short = target - sum(counts.values()) - sum(floors.values())
    order = sorted(sparse, key=lambda k: (-(want[k] - floors[k]),
                                          sparse.index(k)))
    for k in order[:short]:
      floors[k] += 1
    counts.update(floors)
  return {k: counts[k] for k in shapes}


def shapes_of(mask: masks_lib.Mask) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the prunable leaves of `mask`, in tree order."""
  return {k: tuple(np.shape(m)) for k, m in masks_lib.named_leaves(mask).items()
          if m is not None}


def check_every_layer_kept(field: str, density: float,
                           counts: Mapping[str, int],
                           shapes: Mapping[str, tuple[int, ...]],
                           how: str) -> None:
  """Refuses a density at which some layer keeps no weight (training such a
  network is meaningless, and its analysis divides by zero), before
  anything is written.

  Raises:
    LotteryError: ('<field>: <density> keeps no weight of layer ...').
  """
  for path, k in counts.items():
    if k == 0:
      raise LotteryError(
          f"{field}: {density!r} keeps no weight of layer {path!r} "
          f"({math.prod(shapes[path])} weights, {how}); use a higher "
          f"density")


def keep_counts(name: str, mask: masks_lib.Mask, density: float
                ) -> dict[str, int]:
  """Exact keep counts per prunable leaf of `mask` at overall `density`.

  Args:
    name: a registered distribution ('uniform', 'erk', or your own
      `@distributions.register('name')` function of (shapes, density)).
    mask: a mask (its prunable leaves' shapes are what count; their values
      are ignored).
    density: fraction of the prunable weights kept, in [0, 1].

  Returns:
    {path: number of weights to keep}, in tree order; pass it to
    `lottery.pruning.keep_top`.

  Raises:
    LotteryError: for an unknown name ('sparse.distribution: ...') or a
      density outside [0, 1].
  """
  fn = get(name)
  _exact(density)
  return fn(shapes_of(mask), density)
