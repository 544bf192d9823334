"""A masked network as a physically smaller one of the same family.

`shrink` removes the units a mask leaves without effect and returns a model
with fewer units whose outputs equal the masked model's (`apply_mask`) up to
float rounding. A unit of a unit set (`lottery.structure.Units`) can go when

  its producers' kernel columns are all masked: its activation is then a
  constant (ReLU of its bias; the sum of those over the producers of a
  residual stream), whose contribution through the consumers' surviving
  input rows is added to the consumers' biases; or
  its consumers' kernel input rows are all masked: nothing reads it.

Neuron and head pruning (`lottery.structure`) mask both. The model must
declare its coupling (`coupling()`) and how to rebuild itself with other
widths (`with_widths(widths)`, one width per unit set, in units: heads for
a set of heads): the MLP families (`lottery.models.mlp`), VGG, the ResNets
(their blocks' inner channels and residual streams), Conv-2/4/6 and the ViT do. A unit spanning
several indices (`Units.block`, `Units.tiled`: a head's head_dim columns, a
conv channel's rows after a flatten) goes with all of them. A conv channel
goes only when nothing reads it: a silent channel feeds a BatchNorm and a
'same'-padded conv, which make no bias of it (a ResNet's stream channel
with its BatchNorms and identity shortcuts too); so does a head (its value
bias reaches the output projection). A unit set that loses every unit keeps
one unit that contributes nothing (zero input rows), so every layer keeps a
shape.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lottery import masks as masks_lib
from lottery import structure as structure_lib
from lottery.errors import LotteryError
from lottery.models import convolution

__all__ = ["check", "narrowed", "scratch", "shrink"]


def _rows_cols(mask: dict, params: dict, module: str, what: str
               ) -> np.ndarray:
  """The kernel mask of `module` as a bool array (all kept if not
  prunable); `mask`, `params`: flat ({path: leaf}, `named_leaves`)."""
  m = mask.get(f"{module}/kernel")
  kernel = params[f"{module}/kernel"]
  if m is None:
    return np.ones(np.shape(kernel), bool)
  if np.shape(m) != np.shape(kernel):
    raise LotteryError(f"mask: leaf '{module}/kernel' has shape "
                       f"{np.shape(m)}, the {what} has {np.shape(kernel)}")
  return np.asarray(m, bool)


def shrink(model: Any, params: Any, model_state: Any, mask: Any, *,
           x: Any = None) -> tuple[Any, Any, Any]:
  """The masked network with its dead units removed.

  Args:
    model: the Flax module; it must declare `coupling()` and
      `with_widths(widths)` (the MLP families, VGG, the ResNets, Conv-2/4/6
      and the ViT do).
    params: its parameters ({module: {'kernel' (..., in, out), 'bias'
      (out,)}}).
    model_state: its other collections ({collection: {module: {leaf}}}): the
      leaves of a unit set's `channels` modules (BatchNorm running stats)
      are sliced with the units, the rest returned as they are.
    mask: a mask of `params` (None leaves: not prunable).
    x: optional inputs (a few examples) on which the shrunk network is
      checked against the masked one; by default two random inputs shaped
      after the input layer's kernel (a model whose input shape that does
      not tell, the ViT's or a conv net's that flattens other than 32 x 32
      maps, is then not checked).

  Returns:
    (smaller model, its params, model_state): `model.apply` of the smaller
    model on its params equals the original model's on
    `apply_mask(mask, params)` up to float rounding. The kept weights are
    the masked ones (pruned weights stay 0). The smaller model is
    `narrowed`: on the CPU its narrow convolutions run as sums of taps in
    inference.

  Raises:
    LotteryError: one line, for a model that cannot be shrunk, a mask that
      does not fit `params`, or a shrunk network whose outputs differ from
      the masked one's (its coupling() misdescribes the model).
  """
  model_state = {} if model_state is None else model_state
  check(model)
  _check_fits(model, params)
  if mask is None:
    raise LotteryError("mask: None; pass the ticket's mask "
                       "(lottery.make_mask(params) keeps every weight)")
  folds, masked = _folds(model, params, mask)
  out = _by_module(masked)
  state = {c: _by_module(col) for c, col in dict(model_state).items()}
  for units, const, keep, gone, spread in folds:
    for c in units.consumers:
      kernel = out[c]["kernel"]
      if const is not None and "bias" in out[c]:  # Else const is 0.
        out[c]["bias"] = out[c]["bias"] + const @ kernel
      # A kept unit that was gone (a set that lost every unit) reads zeros.
      out[c]["kernel"] = np.where(spread[c](keep & gone)[:, None], 0, kernel)
  for units, _, keep, _, spread in folds:
    cols = spread[None](keep)
    for p in units.producers:
      out[p]["kernel"] = out[p]["kernel"][..., cols]
      if "bias" in out[p]:
        out[p]["bias"] = out[p]["bias"][cols]
    for c in units.consumers:
      out[c]["kernel"] = out[c]["kernel"][..., spread[c](keep), :]
    for m in units.channels:
      for tree in [out] + list(state.values()):
        if m in tree:
          tree[m] = {k: np.asarray(v)[..., cols] for k, v in tree[m].items()}
  small = narrowed(_smaller(model, folds))
  small_params = _nested(out)
  small_state = {c: _nested(v) for c, v in state.items()}
  _check_outputs(model, masked, model_state, small, small_params, small_state,
                 x)
  return small, small_params, small_state


def _check_outputs(model: Any, masked: Any, model_state: Any, small: Any,
                   small_params: Any, small_state: Any, x: Any) -> None:
  """Refuses (one line) a shrunk network whose outputs on `x` (or a probe,
  `_probe_inputs`) differ from the masked one's by more than 1e-3 of their
  largest magnitude: the model's coupling() does not say how its layers
  connect (a residual stream declared as two unit sets, a consumer left
  out), or its with_widths() builds another network. Both run at float32
  precision (no TF32 on GPUs). A model the probes do not fit is not
  checked."""
  from lottery import step  # pylint: disable=g-import-not-at-top
  want = probe = None
  with jax.default_matmul_precision("float32"):
    for probe in ([x] if x is not None else _probe_inputs(model, masked)):
      try:
        want, _ = step.flax_apply(model)(masked, dict(model_state), probe,
                                         train=False)
        break
      except Exception:  # pylint: disable=broad-except
        continue  # Not the model's input shape.
    if want is None:
      return
    name = type(model).__name__
    hint = ("its coupling() or with_widths() does not describe how its "
            "layers connect (docs/methods.md#structure)")
    try:
      got, _ = step.flax_apply(small)(small_params, small_state, probe,
                                      train=False)
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).splitlines() or [type(e).__name__])[0][:160]
      raise LotteryError(f"model: the shrunk {name} does not run on its "
                         f"shrunk params ({first}): {hint}") from None
  want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
  diff = (float(np.max(np.abs(want - got))) if want.shape == got.shape
          else math.inf)
  scale = float(np.max(np.abs(want)))
  if not diff <= 1e-3 * max(scale, 1e-12):
    raise LotteryError(f"model: the shrunk {name} computes other outputs "
                       f"than the masked one (largest difference {diff:.3g} "
                       f"on a probe, outputs up to {scale:.3g}): {hint}")


def _probe_inputs(model: Any, params: Any):
  """Inputs of 2 random examples shaped after the input layer's kernel
  (`input_layer()`), or, for a model without one, after each kernel in
  turn (at most 8)."""
  flat = masks_lib.named_leaves(params)
  layer = getattr(model, "input_layer", None)
  kernels = ([flat.get(f"{layer()}/kernel")] if callable(layer) else
             [v for k, v in flat.items() if k.endswith("/kernel")][:8])
  for kernel in kernels:
    shape = _input_shape(kernel)
    if shape is not None:
      yield jax.random.normal(jax.random.key(0), (2, *shape[1:]))


def _input_shape(kernel: Any) -> tuple[int, ...] | None:
  """A one-example input for a layer of `kernel`: Dense (in, out) takes
  (1, in); a conv (*window, in, out) (1, *size, in), 40 long in 1-D and
  32 x 32 in 2-D."""
  if kernel is None or not 2 <= np.ndim(kernel) <= 4:
    return None
  shape = np.shape(kernel)
  size = {0: (), 1: (40,)}.get(len(shape) - 2, (32,) * (len(shape) - 2))
  return (1, *size, shape[-2]) if size else (1, shape[0])


def _check_fits(model: Any, params: Any) -> None:
  """Refuses (one line) params that are not `model`'s: other parameter
  paths, or a leaf whose last axis (its outputs: units, channels, classes)
  is not the model's. The model's own shapes come from initializing it,
  abstractly, on an input shaped after its input layer's kernel; a model
  that cannot be probed so is not checked."""
  got, name = masks_lib.named_leaves(params), type(model).__name__
  layer = getattr(model, "input_layer", None)
  if not callable(layer):
    return
  layer = layer()
  if not any(k.startswith(f"{layer}/") for k in got):
    raise LotteryError(f"params: not this {name}'s (no {layer}, its input "
                       f"layer)")
  want = _probe(model, got.get(f"{layer}/kernel"))
  if want is None:
    return
  if set(want) != set(got):
    raise LotteryError(
        f"params: not this {name}'s (parameters only in the params: "
        f"{sorted(set(got) - set(want))[:4]}; only in the model: "
        f"{sorted(set(want) - set(got))[:4]})")
  for k, leaf in want.items():
    if np.shape(got[k])[-1:] != tuple(leaf.shape)[-1:]:
      raise LotteryError(
          f"params: {k} has {np.shape(got[k])[-1]} outputs where this "
          f"{name} has {leaf.shape[-1]}: they are another model's")


def _probe(model: Any, kernel: Any) -> dict[str, Any] | None:
  """{path: shape} of `model`'s own parameters, initialized on an input
  shaped after its input layer's `kernel`; None if that cannot be done."""
  shape = _input_shape(kernel)
  if shape is None:
    return None
  x = jnp.zeros(shape, jnp.float32)
  try:
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
  except Exception:  # pylint: disable=broad-except
    return None
  return masks_lib.named_leaves(variables.get("params", {}))


def _by_module(tree: Any) -> dict[str, dict[str, Any]]:
  """{module path ('stage1_block1/conv1'): {leaf name: numpy array}}."""
  out: dict[str, dict[str, Any]] = {}
  for path, leaf in masks_lib.named_leaves(tree).items():
    module, name = path.rsplit("/", 1)
    out.setdefault(module, {})[name] = np.asarray(leaf)
  return out


def _nested(modules: dict[str, dict[str, Any]]) -> dict:
  """`_by_module`'s inverse, with jax arrays."""
  return traverse_util.unflatten_dict(
      {f"{m}/{k}": jnp.asarray(v) for m, leaves in modules.items()
       for k, v in leaves.items()}, sep="/")


def scratch(model: Any, params: Any, model_state: Any, mask: Any,
            key: jax.Array, x: Any) -> tuple[Any, Any]:
  """Liu et al. 2019's scratch baseline, in the full-size model: the shrunk
  architecture's own fresh initialization (`model.with_widths(...).init`
  from `key` on the example input `x`: its fan-ins, not the full model's)
  placed at the units `shrink` keeps; the removed units' biases and
  per-channel leaves are 0 and their kernels' entries masked, the rest
  kept from `params` and `model_state`.

  Under `mask`, the full model on these weights computes what the shrunk
  model computes on its fresh weights, and trains like it when the removed
  units are unread (neuron pruning removes their input rows too): `shrink`
  of the result gives back that initialization.

  Returns:
    (params, model_state) with the shapes of `params` and `model_state`.
  """
  from lottery import rng  # pylint: disable=g-import-not-at-top
  folds, _ = _folds(model, params, mask)
  small = _smaller(model, folds)
  fresh = dict(small.init(rng.flat(key), x))
  small_params = fresh.pop("params")
  # Per module, the kept indices along its kernel's input axis (-2), its
  # output axis (-1, also a producer's bias) and its channel leaves (-1).
  index: dict[str, dict[int, np.ndarray]] = {}
  for units, _, keep, _, spread in folds:
    for m in units.producers + units.channels:
      index.setdefault(m, {})[-1] = np.flatnonzero(spread[None](keep))
    for m in units.consumers:
      index.setdefault(m, {})[-2] = np.flatnonzero(spread[m](keep))

  def place(full: Any, part: Any) -> dict:
    full, part, out = _by_module(full), _by_module(part), {}
    for m, leaves in full.items():
      if m not in index:
        out[m] = part.get(m, leaves)
        continue
      out[m] = {}
      for name, leaf in leaves.items():
        axes = [np.arange(n) for n in leaf.shape]
        for axis, kept in index[m].items():
          if name == "kernel" or axis == -1:
            axes[axis] = kept
        new = np.array(leaf) if name == "kernel" else np.zeros_like(leaf)
        new[np.ix_(*axes)] = part[m][name]
        out[m][name] = new
    return _nested(out)

  state = {c: place(model_state[c], fresh.get(c, {})) for c in model_state}
  return place(params, small_params), state


def check(model: Any, *, field: str = "model", what: str = "shrink"
          ) -> tuple[Any, ...]:
  """The coupling of a model that `shrink` can rebuild smaller.

  Raises:
    LotteryError: '<field>: <what> needs ...', for a model that declares no
      units (`coupling()`) or cannot rebuild itself (`with_widths`).
  """
  coupling = structure_lib.coupling_of(model)
  if coupling is None:
    raise LotteryError(
        f"{field}: {what} needs a model that declares its units (coupling() "
        f"and with_widths(), as the MLP families, VGG, the ResNets, the conv "
        f"nets and the ViT do); "
        f"{type(model).__name__} does not")
  if not hasattr(model, "with_widths"):
    raise LotteryError(
        f"{field}: {what} needs a model that can rebuild itself with other "
        f"widths (with_widths(), as the MLP families, VGG, the ResNets, the "
        f"conv nets and the ViT do); "
        f"{type(model).__name__} declares its units but cannot")
  return coupling


# A silent unit's constant activation, by `Units.activation`.
_ACTIVATIONS = {"relu": lambda b: np.maximum(b, 0),
                "gelu": lambda b: np.asarray(jax.nn.gelu(b))}


def _folds(model: Any, params: Any, mask: Any) -> tuple[list, Any]:
  """Per unit set of the model's coupling: (units, the constant its silent
  units add to the consumers' biases or None, the units kept, the units
  gone, the layouts of `_layouts`); and the masked params (numpy)."""
  coupling = check(model)
  masks_lib.check_compatible(mask, params, what="mask")
  masked = jax.tree.map(np.asarray, masks_lib.apply_mask(mask, params))
  flat_mask, flat, flat_masked = (masks_lib.named_leaves(t)
                                  for t in (mask, params, masked))
  structure_lib.check_modules(coupling, list(flat),
                              model=type(model).__name__, field="model")
  # Constants first, from the original biases, then fold and slice: a
  # module can be a producer of one set and a consumer of another.
  folds = []
  for units in coupling:
    spread = _layouts(units, flat)
    silent = np.logical_and.reduce([_silent(flat_mask, flat, p, spread[None])
                                    for p in units.producers])
    unread = np.logical_and.reduce([_unread(flat_mask, flat, c, spread[c])
                                    for c in units.consumers])
    const = None
    if _foldable(units, flat) and len(units.producers) == 1:
      act = _ACTIVATIONS[units.activation]
      # A producer without a bias: a silent unit outputs act(0).
      zero = np.zeros(len(silent), np.float32)
      const = sum(act(flat_masked.get(f"{p}/bias", zero))
                  for p in units.producers)
      const = np.where(silent & ~unread, const, 0).astype(np.float32)
      if np.any(const) and not all(f"{c}/bias" in flat
                                   for c in units.consumers):
        const = None  # A consumer without a bias cannot take it.
    if const is not None:
      gone = silent | unread
    else:
      # A silent conv channel is no constant for the next 'same'-padded conv
      # (nor through a BatchNorm), a silent unit of a residual stream
      # reaches each consumer through other producers (fc2 reads relu(b1),
      # out relu(b1) + relu(b2)), a silent head's value bias reaches the
      # output projection, a nonzero constant cannot go into a consumer
      # without a bias: it stays, and only unread units go.
      gone = unread
    keep = ~gone
    if not keep.any():
      keep[0] = True  # one unit that contributes nothing (see below)
    folds.append((units, const, keep, gone, spread))
  return folds, masked


class _Spread(NamedTuple):
  """A per-unit vector spread over a member's axis (`structure.Units`'s
  layout: (repeat, units, block))."""
  repeat: int
  block: int

  def __call__(self, units: np.ndarray) -> np.ndarray:
    return structure_lib.unit_indices(units, self.repeat, self.block)


def _layouts(units: Any, params: dict) -> dict[str | None, _Spread]:
  """The units' layouts: {consumer: its input axis', None: the producers'
  and channels' output axis'} (`params` flat); refuses a consumer whose
  length does not fit."""
  n = np.shape(params[f"{units.producers[0]}/kernel"])[-1] // units.block
  out = {None: _Spread(1, units.block)}
  for c in units.consumers:
    length = np.shape(params[f"{c}/kernel"])[-2]
    repeat = structure_lib.repeat_of(units, c, length, n)
    if repeat is None:
      raise LotteryError(f"model: the {n} units of "
                         f"{'+'.join(units.producers)} do not fit the "
                         f"{length} input rows of {c}")
    out[c] = _Spread(repeat, units.block)
  return out


def _smaller(model: Any, folds: list) -> Any:
  """The model with the widths `folds` keep."""
  return model.with_widths([int(keep.sum()) for _, _, keep, _, _ in folds])


def narrowed(model: Any) -> Any:
  """`model` with `narrow` = `lottery.models.convolution.NARROW` if it has
  that field at 0 (the zoo's conv models: the `narrow` of their
  `convolution.conv_module`): on the CPU, its convolutions of at most that
  many channels run as sums of taps when not differentiated, several times
  faster in a compiled program (`jax.jit(model.apply)`) than XLA's library
  kernel for a few channels (docs/performance.md), for programs that
  compile about 3x slower. A `narrow` already set, and models without the
  field, are left as they are; `clone(narrow=0)` gives the library
  kernels back."""
  if getattr(model, "narrow", None) != 0 or \
      "narrow" not in getattr(model, "__dataclass_fields__", {}):
    return model
  return model.clone(narrow=convolution.NARROW)


def _silent(mask: dict, params: dict, module: str, spread: _Spread
            ) -> np.ndarray:
  """Per unit of `module`'s output (its columns laid out as `spread`):
  all of its kernel's weights masked."""
  m = _rows_cols(mask, params, module, "params")
  return _dead(m.reshape(-1, m.shape[-1]).any(axis=0), spread)


def _unread(mask: dict, params: dict, module: str, spread: _Spread
            ) -> np.ndarray:
  """Per input unit of `module` (its rows laid out as `spread`): all of
  its kernel's weights masked."""
  m = np.moveaxis(_rows_cols(mask, params, module, "params"), -2, 0)
  return _dead(m.reshape(m.shape[0], -1).any(axis=1), spread)


def _dead(alive: np.ndarray, spread: _Spread) -> np.ndarray:
  """Per unit, none of its indices `alive` (a vector over an axis)."""
  view, _, others = structure_lib.unit_view(alive, 0, spread.repeat,
                                            spread.block)
  return ~np.any(view, axis=others)


def _foldable(units: Any, params: dict) -> bool:
  """Whether a silent unit is a constant its consumers can take into their
  biases: dense producers and consumers, one index per unit, an activation
  of `_ACTIVATIONS`, no per-channel modules (a consumer without a bias
  takes only a zero constant: `_folds`)."""
  return (not units.channels and units.block == 1 and not units.tiled and
          units.activation in _ACTIVATIONS and all(
              np.ndim(params[f"{m}/kernel"]) == 2
              for m in units.producers + units.consumers))
