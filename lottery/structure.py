"""Sparsity structure: which weights a prune removes together.

A structure sits between the scores and the exact top-k of `lottery.select`:

  'unstructured'  every prunable weight on its own (the default);
  'N:M'           e.g. '2:4': in every run of M consecutive weights along a
                  leaf's reduction axis (a Dense kernel (in, out): axis 0; a
                  conv kernel HWIO: I, axis -2; a vector: its only axis) at
                  most N survive: the N highest-scoring survivors (ties as in
                  `select`: among equal scores the earlier weight goes first,
                  so the later one is kept). From a dense mask that is
                  exactly N of every M, density N/M. The axis length must be
                  a multiple of M;
  'neuron'        whole units: unit j of a layer is its kernel's output
                  column j (last axis), its bias entry j, and, through the
                  model's coupling, the input row j (axis -2) of every layer
                  that reads it. Pruning a unit masks all of them, so the
                  masked network computes what the network without the unit
                  computes (the unit's bias stays, but nothing reads it);
  'head'          whole attention heads: the units a model declares with
                  kind 'head' (`Units.kind`), pruned as 'neuron' prunes its
                  units. Head h of a layer is the columns [h*dh, (h+1)*dh)
                  of its query, key and value kernels (and biases) and the
                  same rows of its output projection (`lottery.models.vit`).

A unit may span several indices of a member's axis (`Units.block`,
`Units.tiled`): the axis, of length repeat * n * block for n units, is read
as (repeat, n, block) in C order and unit u is every index [r, u, b]. One
index per unit (repeat = block = 1) is the default; an attention head is a
block of dh indices; a conv channel c of C read by a Dense after a flatten
of (H, W, C) is the tiled rows c, c + C, c + 2C, ... (repeat H * W, from the
consumer's length).

Neuron and head pruning go through the same exact rounding as weights: each unit
set's mask and scores are reduced to one entry per unit (a unit survives if
any of its weights does; its score is `group_score` over the scores of its
surviving weights), `pruning` removes round(p * n) of the n surviving units
of a set (ties by unit index) on those short leaves, and the unit mask is
spread back over the weights. Densities still count weights.

Group scores reduce element scores, so they are defined for any score of
`lottery.scores`: 'sum' (default) is the sum of the scores, 'l1' the sum of
their absolute values, 'l2' the root of the sum of their squares. With the
magnitude score |w|, 'sum' and 'l1' are the L1 norm of the unit's weights and
'l2' its L2 norm.

Group criteria (`CRITERIA`) define a unit's score themselves; what they read
is fixed by the criterion, not by a choice of element score:

  'taylor'    first-order Taylor (Molchanov et al. 2019, "Importance
              Estimation for Neural Network Pruning", eq. 4 for a group S):
              |sum over the unit's surviving weights s of g_s * w_s|, the
              element terms g * w signed (g the loss gradient on a batch;
              `lottery.scores.taylor_terms`), the absolute value taken once
              per unit. The paper squares the sum; |.| ranks alike. Over a
              unit's producer column and bias the sum is dL/dz for a gate z
              scaling its pre-activation, over its consumer rows dL/dz for a
              gate on its output; through a ReLU the two are equal.
  'bn_scale'  network slimming (Liu et al. 2017, "Learning Efficient
              Convolutional Networks through Network Slimming"): |gamma_j|,
              the BatchNorm scale of the unit's channel (the `channels`
              modules of its `Units`; summed over them if several). It reads
              the channel modules' 'scale' leaves of the scores it is given
              (the params, or their magnitudes), prunable or not; a unit set
              with no BatchNorm channel is refused.

A set marked `Units.stream` is a residual stream (the ResNets' and the
residual MLP's); `residual_streams=False` (`without_streams`) leaves such sets
whole and prunes the others by the same counts.

A model declares its coupling with a `coupling()` method on its module that
returns a tuple of `Units`; a model without one takes 'unstructured' and
'N:M' structures but not 'neuron' or 'head'; a model that declares no units
of kind 'head' does not take 'head'.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lottery import distributions
from lottery import masks as masks_lib
from lottery import select
from lottery.errors import LotteryError

UNSTRUCTURED = "unstructured"
NEURON = "neuron"
HEAD = "head"
# The structures that prune a model's declared units (`Units.kind`).
UNIT_KINDS = (NEURON, HEAD)
# The names a structure may have ('N:M' stands for every N:M pattern).
NAMES = (UNSTRUCTURED, NEURON, HEAD, "N:M")
# Reductions of element scores, then group criteria (see the module doc).
REDUCTIONS = ("sum", "l1", "l2")
CRITERIA = ("taylor", "bn_scale")
GROUP_SCORES = REDUCTIONS + CRITERIA

_N_M = re.compile(r"(\d+):(\d+)")


class Units(NamedTuple):
  """One set of units of a model, as the model's coupling declares it.

  Attributes:
    producers: the modules whose outputs are these units (their kernels'
      last axis, their biases): one module, or several whose outputs are
      added (a residual stream).
    consumers: the modules that read the units (their kernels' axis -2).
    channels: modules with one entry per unit in every leaf (a BatchNorm
      after a conv: scale and bias, its running mean and variance), pruned
      with the unit where prunable and sliced with it by `lottery.shrink`.
    block: indices per unit, consecutive, on every member's axis (an
      attention head: its dh columns of query, key and value, its dh rows of
      the output projection); 1: one index per unit.
    tiled: consumers that read the units through a flatten of (..., n *
      block): their input axis repeats the set's n * block indices (a Dense
      after a flatten of (H, W, C) reads channel c at rows c, c + C, ...);
      the number of repeats follows the consumer's length.
    kind: the structure that prunes these units: 'neuron' or 'head'.
    activation: what lies between the producers and the consumers, for
      `lottery.shrink`'s folding of a silent unit's constant into the
      consumers' biases: 'relu' or 'gelu' fold; anything else does not.
    stream: whether these units are a residual stream (the producers'
      outputs added along skip connections); `residual_streams=False`
      prunes a model's other units and leaves its streams whole
      (`without_streams`).
  """
  producers: tuple[str, ...]
  consumers: tuple[str, ...]
  channels: tuple[str, ...] = ()
  block: int = 1
  tiled: tuple[str, ...] = ()
  kind: str = NEURON
  activation: str = "relu"
  stream: bool = False


class Structure(NamedTuple):
  """A parsed structure: kind 'unstructured', 'neuron', 'head' or 'N:M'
  (with n, m)."""
  kind: str
  n: int = 0
  m: int = 0

  def __str__(self) -> str:
    return f"{self.n}:{self.m}" if self.kind == "N:M" else self.kind


def parse(spec: Any, *, field: str = "structure") -> Structure:
  """Parses 'unstructured', 'neuron', 'head' or 'N:M' (integers 0 < N < M).

  Raises:
    LotteryError: naming `field`, for anything else.
  """
  if isinstance(spec, Structure):
    return spec
  if not isinstance(spec, str):
    raise LotteryError(f"{field}: must be one of {list(NAMES)}, e.g. '2:4' "
                       f"(got {type(spec).__name__} {spec!r:.40})")
  if spec in (UNSTRUCTURED,) + UNIT_KINDS:
    return Structure(spec)
  found = _N_M.fullmatch(spec.strip())
  if not found:
    raise LotteryError(f"{field}: unknown structure, must be one of "
                       f"{list(NAMES)}, e.g. '2:4' (got {spec!r})")
  n, m = int(found.group(1)), int(found.group(2))
  if not 0 < n < m:
    raise LotteryError(f"{field}: an N:M structure needs 0 < N < M (got "
                       f"{spec!r})")
  if spec != f"{n}:{m}":  # One spelling, so that a rerun compares equal.
    raise LotteryError(f"{field}: write the N:M structure as '{n}:{m}' (got "
                       f"{spec!r})")
  return Structure("N:M", n, m)


def parse_n_m(spec: Any, *, field: str = "structure") -> Structure:
  """`parse(spec)` of an N:M pattern; a LotteryError naming `field` for any
  other structure."""
  # Parsed only if it reads as N:M: another structure's message would list
  # the structures this field does not take.
  n_m = isinstance(spec, Structure) or (
      isinstance(spec, str) and _N_M.fullmatch(spec.strip()))
  parsed = parse(spec, field=field) if n_m else None
  if parsed is None or parsed.kind != "N:M":
    raise LotteryError(f"{field}: must be an N:M pattern such as '2:4' (got "
                       f"{spec!r})")
  return parsed


def check_group_score(name: Any, *, field: str = "group_score") -> str:
  """`name` if it is one of GROUP_SCORES, else a LotteryError naming
  `field`."""
  if not isinstance(name, str) or name not in GROUP_SCORES:
    raise LotteryError(f"{field}: unknown group score, must be one of "
                       f"{list(GROUP_SCORES)} (got {name!r})")
  return name


def coupling_of(model: Any) -> tuple[Units, ...] | None:
  """The units a model declares (its module's `coupling()`), or None."""
  fn = getattr(model, "coupling", None)
  return None if fn is None else tuple(Units(*u) for u in fn())


def without_streams(coupling: Sequence[Units] | None,
                    residual_streams: bool = True, *,
                    model: str | None = None,
                    field: str = "residual_streams"
                    ) -> tuple[Units, ...] | None:
  """The unit sets that a prune may remove units of: all of `coupling`, or
  with `residual_streams` False those that are not residual streams
  (`Units.stream`: a stream stays whole; a ResNet's blocks' inner channels
  are pruned). A coupling without streams, or None, is returned as it is.

  Raises:
    LotteryError: naming `field` (and the model), when `residual_streams`
      is not a bool, or is False and every unit set is a stream.
  """
  if not isinstance(residual_streams, bool):
    raise LotteryError(f"{field}: must be True or False (got "
                       f"{type(residual_streams).__name__} "
                       f"{residual_streams!r:.40})")
  if residual_streams or coupling is None:
    return None if coupling is None else tuple(coupling)
  kept = tuple(u for u in coupling if not u.stream)
  if not kept:
    whose = "the coupling" if model is None else f"model {model}"
    raise LotteryError(f"{field}: False keeps every residual stream whole, "
                       f"and {whose} declares no other units; set it to "
                       f"True")
  return kept


def prunable_units(model: Any, residual_streams: bool = True, *,
                   name: str | None = None,
                   field: str = "residual_streams") -> tuple[Units, ...] | None:
  """The unit sets of `model` that a prune may remove units of:
  `without_streams(coupling_of(model), residual_streams, ...)`."""
  return without_streams(coupling_of(model), residual_streams, model=name,
                         field=field)


def stream_producers(coupling: Any) -> tuple[str, ...]:
  """The producers of the residual streams of `coupling` (unit sets, or a
  model that declares them; none for None)."""
  if coupling is None:
    return ()
  if not isinstance(coupling, (tuple, list)):
    coupling = coupling_of(coupling)
  return tuple(p for u in coupling or () if u.stream for p in u.producers)


def reduction_axis(ndim: int) -> int:
  """The axis an N:M group runs along: -2 (a kernel's input axis), or 0 for
  a vector."""
  return 0 if ndim < 2 else ndim - 2


# The shape of a prune under a structure, hashable (a static argument of the
# compiled prune). For 'N:M': one (n, m, axis) per live leaf. For 'neuron' and
# 'head': one (name, members) per unit set: its producers joined with '+' and
# its (live leaf index, axis, repeat, block) members (`Units`: the axis is
# (repeat, units, block)).
NMPlan = tuple[tuple[int, int, int], ...]
Member = tuple[int, int, int, int]
UnitPlan = tuple[tuple[str, tuple[Member, ...]], ...]


def unit_view(x: Any, axis: int, repeat: int, block: int
              ) -> tuple[Any, int, tuple[int, ...]]:
  """`x` (a numpy or jax array) with `axis` split as (repeat, units,
  block): (the view, its units axis, the other axes). One index per unit
  (repeat = block = 1) leaves `x` as it is."""
  if repeat == block == 1:
    return x, axis, _others(x.ndim, axis)
  shape = tuple(x.shape)
  n = shape[axis] // (repeat * block)
  view = x.reshape(shape[:axis] + (repeat, n, block) + shape[axis + 1:])
  return view, axis + 1, _others(view.ndim, axis + 1)


def unit_indices(units: np.ndarray, repeat: int, block: int) -> np.ndarray:
  """A per-unit bool vector spread over the indices of a member's axis
  (`unit_view`'s layout): length repeat * len(units) * block."""
  return np.tile(np.repeat(np.asarray(units, bool), block), repeat)


def repeat_of(units: Units, module: str, length: int, n: int) -> int | None:
  """How many times the axis of `module` (`length` entries) holds the n
  units of `units` (1 unless `module` is tiled); None if it does not fit."""
  span = n * units.block
  if module in units.tiled:
    return length // span if span and length % span == 0 else None
  return 1 if length == span else None


def n_m_plan(spec: Structure, names: Sequence[str],
             shapes: Sequence[tuple[int, ...]], *,
             field: str = "structure") -> NMPlan:
  """(n, m, axis) of every live leaf; refuses an axis that M does not divide.

  Raises:
    LotteryError: naming `field`, the leaf, the axis and its length.
  """
  plan = []
  for name, shape in zip(names, shapes):
    axis = reduction_axis(len(shape))
    length = shape[axis] if shape else 1
    if length % spec.m:
      # A bias (one axis) of a classifier, say: N:M is a kernels' pattern.
      hint = (" (N:M prunes kernels along their inputs: leave biases out, "
              "pruning.prunable=('.*kernel',))" if len(shape) == 1 else "")
      raise LotteryError(
          f"{field}: {str(spec)!r} groups {spec.m} weights along axis {axis} "
          f"of {name} (shape {tuple(shape)}), whose length {length} is not a "
          f"multiple of {spec.m}{hint}")
    plan.append((spec.n, spec.m, axis))
  return tuple(plan)


# What a structure of UNIT_KINDS removes, for messages.
_WHAT = {NEURON: "units", HEAD: "attention heads"}


def check_modules(coupling: Sequence[Units] | None, names: Sequence[str], *,
                  model: str | None = None, field: str = "structure") -> None:
  """Refuses a coupling whose producers or consumers name a module that has
  no parameter among `names` (every leaf of the params, prunable or not):
  a typo in a model's `coupling()`, which `unit_plan` would take for a
  layer left unpruned.

  Raises:
    LotteryError: naming `field`, the module and the model's modules.
  """
  modules = {n.rsplit("/", 1)[0] for n in names}
  for units in coupling or ():
    for module in (*units.producers, *units.consumers):
      if module not in modules:
        whose = ("the coupling" if model is None else
                 f"the coupling of model {model}")
        raise LotteryError(
            f"{field}: {whose} names module {module!r}, which has no "
            f"parameters (the modules: {sorted(modules)})")


def unit_plan(coupling: Sequence[Units] | None, names: Sequence[str],
              shapes: Sequence[tuple[int, ...]], *, kind: str = NEURON,
              model: str | None = None, field: str = "structure"
              ) -> UnitPlan:
  """The unit sets of kind `kind` ('neuron', 'head') over the live leaves
  `names`: (name, members), a set named by its producers joined with '+'
  ('fc1', 'fc1+fc2'), a member (leaf index, axis, repeat, block).

  A producer contributes its 'kernel' (last axis) and 'bias' (axis 0), a
  consumer its 'kernel' (axis -2), each where it is among the live leaves
  (prunable). A set none of whose producers' kernels is live is left out:
  its units cannot be removed. The number of units is the first producer
  leaf's length over `Units.block`.

  Raises:
    LotteryError: naming `field`: for a model with no coupling or no units
      of `kind`, a prunable producer whose consumer kernel is not prunable,
      members that disagree on the number of units, or no unit set at all.
  """
  if coupling is None:
    if model is None:  # lottery.prune called without coupling=.
      raise LotteryError(f"{field}: {kind!r} needs the model's coupling "
                         f"(lottery.prune(..., coupling=model): a model of "
                         f"the zoo, or one that declares coupling()); or use "
                         f"'unstructured' or an N:M structure")
    raise LotteryError(f"{field}: {kind!r} needs the coupling of model "
                       f"{model}, which it does not declare (a coupling() "
                       f"method returning lottery.structure.Units, see "
                       f"docs/methods.md#structure); or use "
                       f"'unstructured' or an N:M structure")
  kinds = sorted({u.kind for u in coupling})
  if kind not in kinds:
    whose = "the coupling" if model is None else f"model {model}"
    raise LotteryError(
        f"{field}: {kind!r} prunes {_WHAT.get(kind, kind)}, and {whose} "
        f"declares none (its units are for {kinds}); use one of "
        f"{kinds}, 'unstructured' or an N:M structure")
  index = {name: j for j, name in enumerate(names)}
  plan = []
  for units in coupling:
    if units.kind != kind:
      continue
    members = []  # (leaf index, axis, module)
    for module in units.producers:
      for leaf in (f"{module}/kernel", f"{module}/bias"):
        if leaf in index:
          members.append((index[leaf], len(shapes[index[leaf]]) - 1, module))
    if not any(names[j].endswith("/kernel") for j, _, _ in members):
      continue
    for module in units.channels:
      for leaf in (f"{module}/scale", f"{module}/bias"):
        if leaf in index:
          members.append((index[leaf], 0, module))
    for module in units.consumers:
      leaf = f"{module}/kernel"
      if leaf not in index:
        # Its unit's constant activation would still reach the output.
        raise LotteryError(
            f"{field}: {kind!r} removes the units of "
            f"{'+'.join(units.producers)} with the input rows of {leaf}, "
            f"which is not prunable; add it to the prunable weights")
      members.append((index[leaf], len(shapes[index[leaf]]) - 2, module))
    n = shapes[members[0][0]][members[0][1]] // units.block
    repeats = [repeat_of(units, module, shapes[j][a], n)
               for j, a, module in members]
    if None in repeats:
      raise LotteryError(
          f"{field}: the units of {'+'.join(units.producers)} have "
          f"different sizes in "
          f"{[(names[j], shapes[j][a]) for j, a, _ in members]}")
    plan.append(("+".join(units.producers), tuple(
        (j, a, r, units.block) for (j, a, _), r in zip(members, repeats))))
  if not plan:
    raise LotteryError(
        f"{field}: {kind!r} finds no prunable units in the coupling "
        f"{[u.producers for u in coupling if u.kind == kind]} (prunable: "
        f"{list(names)})")
  return tuple(plan)


def set_sizes(plan: UnitPlan, shapes: Sequence[tuple[int, ...]]
              ) -> dict[str, int]:
  """{unit set name: its number of units} of a `unit_plan`."""
  return {name: shapes[j][a] // (r * b) for name, ((j, a, r, b), *_) in plan}


def check_model(spec: Any, mask: Any, model: Any, name: str, *,
                field: str = "structure", residual_streams: bool = True,
                streams_field: str = "residual_streams") -> Structure:
  """Refuses a structure that the model `name` (its module `model`, its
  prunable `mask`) cannot take: 'neuron' without a declared coupling, 'head'
  on a model that declares no heads, an N:M whose M does not divide a
  prunable leaf's reduction axis, `residual_streams` False on a model whose
  units are all residual streams (`without_streams`).

  Raises:
    LotteryError: one line naming `field` (or `streams_field`), the model
      or the leaf.
  """
  spec = parse(spec, field=field)
  live = distributions.shapes_of(mask)
  if spec.kind == "N:M":
    n_m_plan(spec, list(live), list(live.values()), field=field)
  elif spec.kind in UNIT_KINDS:
    coupling = prunable_units(model, residual_streams, name=repr(name),
                              field=streams_field)
    check_modules(coupling, list(masks_lib.named_leaves(mask)),
                  model=repr(name), field=field)
    unit_plan(coupling, list(live), list(live.values()),
              kind=spec.kind, model=repr(name), field=field)
  return spec


def check_streams(residual_streams: Any, spec: Any, *,
                  field: str = "residual_streams",
                  structure_field: str = "structure") -> bool:
  """`residual_streams` if it is a bool that structure `spec` can take:
  False only with 'neuron' or 'head' (the structures that prune units).

  Raises:
    LotteryError: one line naming `field`.
  """
  without_streams(None, residual_streams, field=field)
  spec = parse(spec, field=structure_field)
  if not residual_streams and spec.kind not in UNIT_KINDS:
    raise LotteryError(
        f"{field}: False leaves the residual streams out of the units that "
        f"{structure_field}='neuron' or 'head' prunes; it does not apply to "
        f"{str(spec)!r}")
  return residual_streams


def unit_counts(mask: Any, coupling: Sequence[Units], *,
                kind: str = NEURON, field: str = "structure"
                ) -> dict[str, int]:
  """{unit set name: its number of units} over the prunable leaves of
  `mask` (the sets of kind `kind` that `unit_plan` finds)."""
  live = distributions.shapes_of(mask)
  shapes = list(live.values())
  return set_sizes(unit_plan(coupling, list(live), shapes, kind=kind,
                             field=field), shapes)


def kept_after(n: int, rates: Sequence[float]) -> list[int]:
  """The survivors of `n` units after each of the rounds that remove
  `rates[k]` of the survivors (the one rounding rule, `select`)."""
  out = []
  for rate in rates:
    n -= select.num_to_remove(rate, n)
    out.append(n)
  return out


def emptied_sets(mask: Any, coupling: Sequence[Units], kind: str = NEURON
                 ) -> list[str]:
  """The unit sets of kind `kind` of `coupling` (by name, `whole_units`)
  whose every unit `mask` removes; a host helper."""
  dead = whole_units(mask, [u for u in coupling if u.kind == kind])
  return [name for name, d in dead.items()
          if d is not None and np.all(d)]


def _others(ndim: int, axis: int) -> tuple[int, ...]:
  return tuple(a for a in range(ndim) if a != axis)


def reduce_units(plan: UnitPlan, alive: Sequence[jax.Array],
                 scores: Sequence[jax.Array], group_score: str,
                 scales: Sequence[Sequence[jax.Array]] | None = None
                 ) -> tuple[list[jax.Array], list[jax.Array]]:
  """Per unit set, (units alive, unit scores), each a vector over units.

  A unit is alive if any of its weights is; its score is `group_score` over
  the scores of its surviving weights (0 for a dead unit): 'sum', 'l1',
  'l2', or 'taylor' (|sum|). Under 'bn_scale' it is the sum of |gamma| over
  `scales[set]`, the unit set's BatchNorm scale vectors (`channel_scales`).
  """
  unit_alive, unit_scores = [], []
  for u, (_, members) in enumerate(plan):
    any_alive, total = None, None
    for j, axis, repeat, block in members:
      a, _, others = unit_view(jnp.asarray(alive[j]).astype(bool), axis,
                               repeat, block)
      s, _, _ = unit_view(jnp.asarray(scores[j]).astype(jnp.float32), axis,
                          repeat, block)
      if group_score == "l1":
        s = jnp.abs(s)
      elif group_score == "l2":
        s = jnp.square(s)
      part_alive = jnp.any(a, axis=others)
      part = jnp.sum(jnp.where(a, s, 0.0), axis=others)
      any_alive = part_alive if any_alive is None else any_alive | part_alive
      total = part if total is None else total + part
    if group_score == "l2":
      total = jnp.sqrt(total)
    elif group_score == "taylor":
      total = jnp.abs(total)
    elif group_score == "bn_scale":
      gammas = sum(jnp.abs(jnp.asarray(g).astype(jnp.float32))
                   for g in scales[u])
      total = jnp.where(any_alive, gammas, 0.0)
    unit_alive.append(any_alive)
    unit_scores.append(total)
  return unit_alive, unit_scores


def channel_scales(coupling: Sequence[Units], plan: UnitPlan,
                   names: Sequence[str], *, model: str | None = None,
                   field: str = "group_score") -> tuple[tuple[int, ...], ...]:
  """For 'bn_scale': per unit set of `plan`, the indices in `names` (every
  parameter leaf, prunable or not) of its channel modules' 'scale' leaves.

  Raises:
    LotteryError: naming `field` and the model, for a unit set with no
      BatchNorm scale among its channels.
  """
  index = {name: j for j, name in enumerate(names)}
  sets = {"+".join(u.producers): u for u in coupling}
  out = []
  for name, _ in plan:
    found = tuple(index[f"{c}/scale"] for c in sets[name].channels
                  if f"{c}/scale" in index)
    if not found:
      whose = "" if model is None else f" of model {model}"
      raise LotteryError(
          f"{field}: 'bn_scale' scores a unit by the scale of its BatchNorm "
          f"channel, but the units of {name}{whose} have none; use one of "
          f"{[g for g in GROUP_SCORES if g != 'bn_scale']}")
    out.append(found)
  return tuple(out)


def check_criterion(group_score: Any, spec: Any, mask: Any, model: Any,
                    name: str, *, field: str = "group_score",
                    structure_field: str = "structure") -> str:
  """Refuses a group score that the model `name` (its module `model`, its
  mask `mask` with a None leaf per non-prunable parameter) cannot take under
  structure `spec`: an unknown name, a reduction other than 'sum' or a
  criterion without 'neuron' or 'head' (they would be ignored), or
  'bn_scale' on a unit set without BatchNorm (`channel_scales`; only with a
  `mask`: a config rule passes None for the mask, model and name).

  Raises:
    LotteryError: one line naming `field` and the model.
  """
  check_group_score(group_score, field=field)
  spec = parse(spec, field=structure_field)
  if group_score != "sum" and spec.kind not in UNIT_KINDS and (
      group_score not in CRITERIA):
    raise LotteryError(
        f"{field}: {group_score!r} reduces each unit's weight scores, and "
        f"{str(spec)!r} has no units: set it to 'sum' or {structure_field} to "
        f"'neuron' or 'head'")
  if group_score not in CRITERIA:
    return group_score
  if spec.kind not in UNIT_KINDS:
    raise LotteryError(
        f"{field}: {group_score!r} scores whole units: it needs "
        f"{structure_field}='neuron' or 'head' (got {str(spec)!r})")
  if group_score == "bn_scale" and mask is not None:
    live = distributions.shapes_of(mask)
    coupling = coupling_of(model)
    plan = unit_plan(coupling, list(live), list(live.values()),
                     kind=spec.kind, model=repr(name), field=structure_field)
    channel_scales(coupling, plan, list(masks_lib.named_leaves(mask)),
                   model=repr(name), field=field)
  return group_score


def spread_units(plan: UnitPlan, alive: Sequence[jax.Array],
                 unit_alive: Sequence[jax.Array]) -> list[jax.Array]:
  """The weight mask: `alive` with every weight of a pruned unit removed."""
  out = [jnp.asarray(a).astype(bool) for a in alive]
  for (_, members), units in zip(plan, unit_alive):
    for j, axis, repeat, block in members:
      view, unit_axis, _ = unit_view(out[j], axis, repeat, block)
      shape = [1] * view.ndim
      shape[unit_axis] = -1
      out[j] = (view & jnp.reshape(units, shape)).reshape(out[j].shape)
  return out


def _n_m_ranks(live: jax.Array, s: jax.Array, m: int, axis: int
               ) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
  """(rank of every weight in its run of m along `axis`, `live` in the same
  layout, the moved shape): 0 = best; `live` weights rank above the others,
  then by `select`'s keys of `s`, then the later weight above the earlier."""
  keys = select._sort_keys(s, jnp.ones_like(live))  # pylint: disable=protected-access
  # Each leaf as (..., runs, M) with the runs of M along the last axis.
  k = jnp.moveaxis(keys, axis, -1)
  moved = k.shape
  k = k.reshape(moved[:-1] + (moved[-1] // m, m))
  live = jnp.moveaxis(live, axis, -1).reshape(k.shape)
  pos = jnp.arange(m)
  # beats[..., i, j]: weight j ranks above weight i.
  ki, kj = k[..., :, None], k[..., None, :]
  li, lj = live[..., :, None], live[..., None, :]
  beats = (lj & ~li) | ((lj == li) & (
      (kj > ki) | ((kj == ki) & (pos[None, :] > pos[:, None]))))
  return jnp.sum(beats, axis=-1, dtype=jnp.int32), live, moved


def _unmove(x: jax.Array, moved: tuple[int, ...], axis: int,
            shape: tuple[int, ...]) -> jax.Array:
  return jnp.moveaxis(x.reshape(moved), -1, axis).reshape(shape)


def n_m_leaves(plan: NMPlan, alive: Sequence[jax.Array],
               scores: Sequence[jax.Array]
               ) -> tuple[list[jax.Array], jax.Array]:
  """Keeps the N highest-scoring survivors of every M along each leaf's axis.

  Ranks with `select`'s keys (NaN as -inf, -0.0 as 0.0); among equal scores
  the later weight ranks higher (the earlier one goes first, as in every
  prune); pruned weights rank below every survivor and never come back.

  Returns:
    (new mask leaves, whether all survivors' scores are finite).
  """
  out, finite = [], jnp.bool_(True)
  for (n, m, axis), a, s in zip(plan, alive, scores):
    a = jnp.asarray(a).astype(bool)
    s = jnp.asarray(s).astype(jnp.float32)
    finite = finite & jnp.all(jnp.isfinite(s) | ~a)
    if a.ndim == 0:
      out.append(a)
      continue
    rank, live, moved = _n_m_ranks(a, s, m, axis)
    out.append(_unmove(live & (rank < n), moved, axis, a.shape))
  return out, finite


def n_m_fill(plan: NMPlan, kept: Sequence[jax.Array],
             scores: Sequence[jax.Array]) -> list[jax.Array]:
  """Tops every run of M along each leaf's axis up to exactly N: a run keeps
  its `kept` weights (at most N) and adds the highest-scoring of its others
  (ties as in `n_m_leaves`: the later weight first). Traceable."""
  out = []
  for (n, m, axis), a, s in zip(plan, kept, scores):
    a = jnp.asarray(a).astype(bool)
    if a.ndim == 0:
      out.append(a)
      continue
    rank, _, moved = _n_m_ranks(a, jnp.asarray(s).astype(jnp.float32), m,
                                axis)
    out.append(_unmove(rank < n, moved, axis, a.shape))
  return out


def whole_units(mask: Any, coupling: Sequence[Units]) -> dict[str, np.ndarray]:
  """Per unit set (named by its producers, '+'-joined), which units are
  entirely pruned: every weight of the unit in the prunable kernels of its
  producers and consumers is masked (a head: all its query, key and value
  columns and output rows). A host helper for checks and tests."""
  flat = masks_lib.named_leaves(mask)
  out = {}
  for units in coupling:
    dead, n = None, None
    parts = [(p, -1) for p in units.producers] + [
        (c, -2) for c in units.consumers]
    for module, axis in parts:
      m = flat.get(f"{module}/kernel")
      if m is None:
        continue
      m = np.asarray(m, bool)
      axis %= m.ndim
      if n is None:
        n = m.shape[axis] // units.block
      repeat = repeat_of(units, module, m.shape[axis], n)
      view, _, others = unit_view(m, axis, repeat, units.block)
      gone = ~np.any(view, axis=others)
      dead = gone if dead is None else dead & gone
    out["+".join(units.producers)] = dead
  return out
