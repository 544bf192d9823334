"""2-D convolutions whose gradients XLA:CPU runs fast inside loops.

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
Anything else (1-D or 3-D convolutions, dilations, feature groups, other
dimension numbers) goes to `lax.conv_general_dilated` unchanged.

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
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_CANONICAL = ("NHWC", "HWIO", "NHWC")
# lax.conv_dimension_numbers' specs of the canonical form (Flax's default).
_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _canonical_conv(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision=precision)


def _forward(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision=precision), (x, w)


def _backward(strides, padding, precision, residuals, g):
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


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated` with canonical backward convolutions.

  Same signature and forward result. A 2-D convolution in Flax's default
  layout (NHWC input, HWIO kernel, NHWC output) with no dilation and one
  feature group differentiates through the explicit canonical form of this
  module; every other call is `lax.conv_general_dilated` itself.
  """
  plain = (lhs.ndim == 4 and _is_unit(lhs_dilation) and
           _is_unit(rhs_dilation) and feature_group_count == 1 and
           batch_group_count == 1 and preferred_element_type is None)
  if plain and dimension_numbers is not None:
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (tuple(dn.lhs_spec), tuple(dn.rhs_spec),
             tuple(dn.out_spec)) == _SPECS
  if not plain:
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
  return _canonical_conv(lhs, rhs, strides, padding, precision)


# flax.linen.Conv with the convolution above; parameters and names unchanged.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
