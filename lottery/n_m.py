"""N:M sparse kernels in the compressed layout of sparse tensor cores.

A kernel pruned N:M (`lottery.structure`: at most N of every M consecutive
weights along its reduction axis survive) is stored as sparse tensor cores
(NVIDIA Ampere, sm80+, 2:4) and cuSPARSELt take it: per group of M along the
reduction axis, the N kept values and their positions in the group. For a
Dense kernel (K, O) under 2:4 that is `values` (K/2, O) and `indices` (K/2,
O), each index in 0..3; the kept weights of a group come in the order of
their positions. A group with fewer than N survivors is padded with zeros at
positions it does not keep, so the packed form always has N entries a group.

    packed = n_m.pack(kernel, mask, 2, 4)   # values, indices (uint8)
    n_m.unpack(packed)                      # == kernel * mask, exactly
    n_m.matmul(x, packed)                   # == x @ (kernel * mask)

JAX (0.10.2) has no N:M kernel: `jax.experimental.sparse` holds BCOO and
BCSR formats, neither of which is N:M, on any platform. `matmul` therefore
rebuilds the dense kernel from the packed form inside the compiled program
(a scatter of the values to their positions) and runs a dense matmul, on
every platform, and says so once per process in the log (absl, INFO). The
packed form is what a native kernel would read; the dense matmul is what
runs today.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lottery import structure as structure_lib
from lottery.errors import LotteryError

__all__ = ["Packed", "fallback_note", "matmul", "pack", "unpack"]


@flax.struct.dataclass
class Packed:
  """A kernel in N:M compressed form (a pytree: `values` and `indices` are
  its leaves, the rest static).

  Attributes:
    values: (G * N, ...rest): the N kept weights of each of the G groups of
      M along the reduction axis, moved to the front; the rest of the
      kernel's axes follow in order.
    indices: like `values`, uint8: each value's position in its group
      (0..M-1).
    shape: the dense kernel's shape.
    n, m: the pattern.
    axis: the reduction axis of the dense kernel (`structure.reduction_axis`:
      -2 of a kernel, as a non-negative index; 0 of a vector).
  """
  values: jax.Array
  indices: jax.Array
  shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
  n: int = flax.struct.field(pytree_node=False)
  m: int = flax.struct.field(pytree_node=False)
  axis: int = flax.struct.field(pytree_node=False)


def pack(kernel: Any, mask: Any, n: int, m: int, *,
         name: str = "kernel") -> Packed:
  """The N:M compressed form of `kernel * mask` (host arrays).

  Args:
    kernel: a prunable leaf: a Dense kernel (K, O), a conv kernel (H, W, I,
      O) or a vector.
    mask: its boolean mask, with at most `n` kept weights in every group of
      `m` consecutive ones along the reduction axis.
    n, m: the pattern, 0 < n < m <= 256.
    name: the leaf's name in errors.

  Returns:
    A `Packed`: `unpack` of it equals `kernel * mask` exactly.

  Raises:
    LotteryError: one line naming `name`, for a mask of another shape, an
      axis that `m` does not divide, or a group with more than `n` kept.
  """
  spec = structure_lib.parse(f"{n}:{m}", field=f"{name}: pattern")
  if m > 256:
    raise LotteryError(f"{name}: pattern {spec}: M must be at most 256 (its "
                       f"positions are stored as uint8)")
  kernel, mask = np.asarray(kernel), np.asarray(mask, bool)
  if kernel.shape != mask.shape or not kernel.ndim:
    raise LotteryError(f"{name}: the mask has shape {mask.shape}, the kernel "
                       f"{kernel.shape}")
  axis = structure_lib.reduction_axis(kernel.ndim)
  length = kernel.shape[axis]
  if length % m:
    raise LotteryError(f"{name}: {spec} groups {m} weights along axis {axis} "
                       f"of shape {kernel.shape}, whose length {length} is not "
                       f"a multiple of {m}")
  # (G, M, rest...): the groups along the (front) reduction axis.
  grouped = lambda a: np.moveaxis(a, axis, 0).reshape(
      (length // m, m) + a.shape[:axis] + a.shape[axis + 1:])
  w, keep = grouped(np.where(mask, kernel, 0)), grouped(mask)
  kept = keep.sum(axis=1)
  if (kept > n).any():
    first = tuple(int(i) for i in np.unravel_index(np.argmax(kept > n),
                                                   kept.shape))
    raise LotteryError(
        f"{name}: the mask is not {spec} along axis {axis}: group "
        f"{first[0]} (positions {first[0] * m}..{first[0] * m + m - 1}) of "
        f"column {first[1:]} keeps {kept[first]} weights")
  # Per group and column: the kept positions in order, then the pruned ones
  # (values 0) to fill the group's N entries.
  order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
  values = np.take_along_axis(w, order, axis=1)
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  return Packed(jnp.asarray(flat(values)),
                jnp.asarray(flat(order).astype(np.uint8)),
                tuple(kernel.shape), n, m, axis)


def unpack(packed: Packed) -> jax.Array:
  """The dense kernel of `packed` (zeros where pruned); jittable."""
  n, m, axis, shape = packed.n, packed.m, packed.axis, packed.shape
  rest = shape[:axis] + shape[axis + 1:]
  groups = shape[axis] // m
  values = packed.values.reshape((groups, n, -1))
  cols = values.shape[-1]
  g = jnp.arange(groups)[:, None, None]
  c = jnp.arange(cols)[None, None, :]
  pos = packed.indices.reshape((groups, n, cols)).astype(jnp.int32)
  # Each group's N positions are distinct: a plain scatter, exact.
  dense = jnp.zeros((groups, m, cols), values.dtype).at[g, pos, c].set(
      values, unique_indices=True)
  return jnp.moveaxis(dense.reshape((shape[axis],) + rest), 0, axis)


def fallback_note() -> str:
  """The line `matmul` logs: no N:M kernel runs on this platform."""
  return (f"lottery.n_m: JAX {jax.__version__} has no N:M sparse kernel "
          f"(jax.experimental.sparse offers none) on "
          f"{jax.default_backend()}; n_m.matmul rebuilds the dense kernel "
          f"from the packed form and runs a dense matmul")


def matmul(x: jax.Array, packed: Packed) -> jax.Array:
  """`x @ kernel` for a packed Dense kernel (K, O): x (..., K) -> (..., O).

  Equal to `x @ unpack(packed)`: the kernel is rebuilt from its packed form
  in the compiled program and multiplied densely (see the module doc); the
  first call logs `fallback_note()` once.

  Raises:
    LotteryError: for a packed kernel that is not 2-D or an `x` whose last
      axis is not K.
  """
  if len(packed.shape) != 2:
    raise LotteryError(f"n_m.matmul: takes a packed Dense kernel (K, O), not "
                       f"one of shape {packed.shape}")
  if x.shape[-1] != packed.shape[0]:
    raise LotteryError(f"n_m.matmul: x has {x.shape[-1]} features on its last "
                       f"axis, the kernel {packed.shape[0]} inputs")
  # A warning: shown by a plain script, whose absl logging shows no INFO.
  logging.log_first_n(logging.WARNING, "%s", 1, fallback_note())
  return x @ unpack(packed)
