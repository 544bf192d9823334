"""Convolutions whose gradients XLA:CPU runs fast inside loops.

`Conv` is `flax.linen.Conv` with `conv_general_dilated` below: the same
parameters, the same forward convolution; only the backward pass is spelled
out. The models' convolutions use it.

Why. JAX differentiates a convolution into two more: the input gradient
(the flipped kernel with its input and output features swapped) and the kernel
gradient (the input with its batch and feature roles swapped). XLA:CPU runs a
convolution through a library kernel only in the canonical form -- input
(N, H, W, C), kernel (H, W, I, O), output (N, H, W, O) -- and its
`ConvCanonicalization` pass, which rewrites the other forms into it with
transposes around, visits the program's entry computation only. A gradient
convolution inside a `lax.scan` or `fori_loop` body keeps its form and is
emitted as a plain loop nest: a ResNet or Conv-2 train step inside a rolled
scan ran 45-120x slower than the same step called on its own
(`experiments/repro_scan_conv.py`, docs/performance.md). Written here with
the transposes explicit, every convolution of the backward pass is canonical
wherever it sits, so one loop form serves every platform.

The arithmetic is what XLA's canonicalization produces in a per-step
program: the same convolutions on the same transposed operands (the train
step's losses and weights match the per-step program's to float rounding).
A 1-D convolution in Flax's layout ((N, W, C) input, (W, I, O) kernel) runs
as the 2-D one of a single row, which gives lax's 1-D values and gradients
bit for bit (the MNIST-1D CNN's 4000 steps in a rolled scan: 9.0 s with
lax's 1-D form, against 2.1 s as per-step calls; 1.8 s in this one).
Anything else (3-D convolutions, dilations, feature groups, a preferred
element type, other dimension numbers) goes to `lax.conv_general_dilated`
unchanged.

Narrow convolutions. XLA:CPU runs a convolution of a few channels far below
its rate for wide ones: a 3x3 convolution of 256 32x32 images with 2 input
and 2 output channels took ~9 ms, about what 16 channels take, against 1 ms
as a sum over the kernel's taps and input channels of shifted input slices
times kernel rows, which XLA fuses into one loop. A model's convolutions
built by `conv_module(narrow)` with N = narrow > 0 run a float32 convolution
with at most N input and output channels (and at most 9 N taps times input
channels) in that form on the CPU when it is not differentiated. The conv
models take it as their `narrow` field: 0 for the models of the registry,
every convolution on the library kernel, `NARROW` (8) for the smaller
networks that `lottery.shrink` makes and `lottery.export` loads, whose
inference is what they are for. Not everywhere, because the sums make a
narrow network's programs compile about 3x slower (a width-4 ResNet-20's
forward pass 1.8 s against 0.5 s): the test suite, compile-bound, and
every evaluation in training would feel it. The values agree with the
library convolution's to float rounding.

On the CPU the kernel gradient's input passes through `_unfused` before its
transpose. Otherwise XLA fuses the element-wise chain that produced the
activation (BatchNorm, residual additions, ReLU) into the transpose, which
recomputes it while reading every operand with the batch's stride: those
transposes were half of ResNet-20's CPU train step. Behind a conditional the
transpose reads the activation once, already computed; the values are the
same bits (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_CANONICAL = ("NHWC", "HWIO", "NHWC")
# lax.conv_dimension_numbers' specs of the canonical form (Flax's default),
# and of Flax's default 1-D layout ((N, W, C) input, (W, I, O) kernel).
_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_SPECS_1D = ((0, 2, 1), (2, 1, 0), (0, 2, 1))


def _conv(x, w, strides, padding, lhs_dilation=None, rhs_dilation=None,
          precision=None):
  return lax.conv_general_dilated(
      x, w, strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=_CANONICAL,
      precision=precision)


@jax.custom_batching.custom_vmap
def _behind_conditional(x):
  # A conditional is a boundary XLA does not fuse across. The predicate is
  # read from x so that it is not a constant XLA would fold; the branches
  # differ so that JAX does not forward x past the conditional.
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: v * 1.0, x)


@_behind_conditional.def_vmap
def _behind_conditional_vmap(axis_size, in_batched, x):
  # Vmapped (replicates), one conditional for the whole batch: a batched
  # predicate would turn it into a select, which XLA fuses.
  del axis_size
  return _behind_conditional(x), in_batched[0]


@jax.custom_jvp
def _unfused(x):
  """x, materialized where it is consumed: on the CPU it passes through a
  conditional that XLA's fusion does not cross; elsewhere (and for empty or
  non-float arrays) it is x itself. The identity to differentiation (GraSP
  differentiates the backward pass)."""
  if x.size == 0 or not jnp.issubdtype(x.dtype, jnp.inexact):
    return x
  return lax.platform_dependent(x, cpu=_behind_conditional,
                                default=lambda v: v)


@_unfused.defjvp
def _unfused_jvp(primals, tangents):
  return _unfused(primals[0]), tangents[0]


# The `narrow` of shrunk networks: channels up to which a float32
# convolution runs as a sum of taps on the CPU when not differentiated.
# `python -m experiments.repro_narrow_conv` on a 2-core AMD EPYC CPU (3x3,
# stride 1, 256 images of 32x32, 16x16 and 8x8; docs/performance.md): the sum
# was 1.3-8x faster than the library kernel up to 8 input and output
# channels, 0.3-0.5x at 12 and 16, so 8.
NARROW = 8


def _taps(x, w, strides, padding):
  """The convolution (NHWC input, HWIO kernel, explicit padding) as a sum
  over the kernel's taps and input channels of each tap's strided input
  slice times the kernel's row of output features."""
  kh, kw, ci, _ = w.shape
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  (sh, sw), (n, h, wd, _) = strides, xp.shape
  oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
  out = None
  for dy in range(kh):
    for dx in range(kw):
      tap = lax.slice(xp, (0, dy, dx, 0),
                      (n, dy + (oh - 1) * sh + 1, dx + (ow - 1) * sw + 1, ci),
                      (1, sh, sw, 1))
      for i in range(ci):
        term = tap[..., i:i + 1] * w[dy, dx, i]
        out = term if out is None else out + term
  return out


def _is_narrow(x, w, padding, narrow: int) -> bool:
  kh, kw, ci, co = w.shape
  h, wd = (x.shape[1 + a] + sum(padding[a]) for a in (0, 1))
  return (x.dtype == w.dtype == jnp.float32 and 0 < min(ci, co) and
          max(ci, co) <= narrow and
          kh * kw * ci <= 9 * narrow and h >= kh and wd >= kw and
          x.shape[0] > 0)


def _forward_conv(x, w, strides, padding, precision, narrow):
  """The convolution: on the CPU one of at most `narrow` channels as
  `_taps`, else the library's."""
  if not _is_narrow(x, w, padding, narrow):
    return _conv(x, w, strides, padding, precision=precision)
  return _narrow_conv(x, w, strides, padding, precision)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _narrow_conv(x, w, strides, padding, precision):
  # Compiled on its own, so that a network applied without jit runs each
  # convolution as one program, not as its 9 x channels terms one by one
  # (a shrunk ResNet-20 took 0.8 s a call instead of 0.1 s); inside a jit
  # it is inlined. Input and output behind conditionals: fused into the
  # sum's loop, the chain that computed the input (BatchNorm, ReLU) would be
  # recomputed for every term, and the sum for every consumer it were fused
  # into.
  return lax.platform_dependent(
      x, w, cpu=lambda x, w: _unfused(_taps(_unfused(x), w, strides,
                                            padding)),
      default=lambda x, w: _conv(x, w, strides, padding,
                                 precision=precision))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _canonical_conv(x, w, strides, padding, precision, narrow):
  return _forward_conv(x, w, strides, padding, precision, narrow)


def _forward(x, w, strides, padding, precision, narrow):
  # Differentiated (training): the library convolution. As a sum of taps the
  # gradient of a narrow network compiled about 3x slower (ResNet-20 at width
  # 4: 5.3 s against 1.8 s); inference is where shrunk networks run.
  del narrow
  return _conv(x, w, strides, padding, precision=precision), (x, w)


def _backward(strides, padding, precision, narrow, residuals, g):
  del narrow
  x, w = residuals
  kernel, inputs, outputs = w.shape[:2], x.shape[1:3], g.shape[1:3]
  # Input gradient: g dilated by the strides, convolved with the kernel
  # flipped in space, its input and output features swapped (as HWIO).
  pads = []
  for k, i, o, s, (lo, _) in zip(kernel, inputs, outputs, strides, padding):
    before = k - 1 - lo
    pads.append((before, i + k - 2 - (o - 1) * s - before))
  w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  dx = _conv(g, w_t, (1, 1), pads, lhs_dilation=strides, precision=precision)
  # Kernel gradient: the input's channels as the batch and its batch as the
  # features, g as a (H, W, N, O) kernel dilated by the strides; the output
  # (I, kh, kw, O) is the kernel gradient with I first.
  pads = [(lo, k + (o - 1) * s - i - lo)
          for k, i, o, s, (lo, _) in zip(kernel, inputs, outputs, strides,
                                          padding)]
  dw = _conv(jnp.transpose(_unfused(x), (3, 1, 2, 0)),
             jnp.transpose(g, (1, 2, 0, 3)),
             (1, 1), pads, rhs_dilation=strides, precision=precision)
  return dx, jnp.transpose(dw, (1, 2, 0, 3))


_canonical_conv.defvjp(_forward, _backward)


def _is_unit(dilation) -> bool:
  return dilation is None or all(d == 1 for d in dilation)


def _specs(lhs, rhs, dimension_numbers) -> tuple | None:
  """The (input, kernel, output) specs of `dimension_numbers`; None for
  None (lax's default layout, (N, C, ...), never Flax's)."""
  if dimension_numbers is None:
    return None
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, *, narrow: int = 0
                         ) -> jax.Array:
  """`lax.conv_general_dilated` with canonical backward convolutions.

  Same signature and forward result. A 2-D convolution in Flax's default
  layout (NHWC input, HWIO kernel, NHWC output) with no dilation and one
  feature group differentiates through the explicit canonical form of this
  module, and so does such a 1-D one ((N, W, C) input, (W, I, O) kernel), as
  the 2-D convolution of a single row; every other call is
  `lax.conv_general_dilated` itself. `narrow`: on the CPU, such a
  convolution of at most `narrow` float32 channels runs as a sum of taps when
  not differentiated (the module doc).
  """
  simple = (_is_unit(lhs_dilation) and _is_unit(rhs_dilation) and
            feature_group_count == 1 and batch_group_count == 1 and
            preferred_element_type is None)
  specs = _specs(lhs, rhs, dimension_numbers) if simple else None
  if specs == _SPECS_1D:
    # Padding strings mean the same for the row: its kernel has height 1.
    if not isinstance(padding, str):
      padding = ((0, 0), *padding)
    return conv_general_dilated(
        lhs[:, None], rhs[None], (1, *window_strides), padding,
        dimension_numbers=_CANONICAL, precision=precision,
        narrow=narrow)[:, 0]
  if specs != _SPECS:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides,
                                  padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _canonical_conv(lhs, rhs, strides, padding, precision, int(narrow))


def conv_module(narrow: int = 0) -> Callable[..., nn.Conv]:
  """flax.linen.Conv with the convolution above (`narrow` as there);
  parameters and names unchanged. One object per value of `narrow`, so
  that modules built with it compare equal."""
  return _conv_module(int(narrow))


@functools.cache
def _conv_module(narrow: int) -> Callable[..., nn.Conv]:
  if not narrow:
    return functools.partial(nn.Conv,
                             conv_general_dilated=conv_general_dilated)
  return functools.partial(nn.Conv, conv_general_dilated=functools.partial(
      conv_general_dilated, narrow=narrow))


Conv = conv_module(0)
