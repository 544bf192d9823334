"""lottery.n_m: the compressed N:M layout, its exact round trip, and the
packed matmul (jitted) against the masked dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from lottery import n_m
from lottery import pruning
from lottery import structure
from lottery.errors import LotteryError


def test_pack_keeps_each_groups_values_and_positions_in_order():
  # One column, K = 8: groups [0..3] and [4..7] of a 2:4 mask.
  kernel = np.arange(1, 9, dtype=np.float32).reshape(8, 1)
  mask = np.array([0, 1, 0, 1, 1, 0, 0, 0], bool).reshape(8, 1)
  p = n_m.pack(kernel, mask, 2, 4)
  # Group 0 keeps positions 1 and 3; group 1 keeps only 0, padded with its
  # first pruned position (1) and a zero value.
  np.testing.assert_array_equal(p.values[:, 0], [2, 4, 5, 0])
  np.testing.assert_array_equal(p.indices[:, 0], [1, 3, 0, 1])
  assert p.indices.dtype == jnp.uint8
  assert (p.shape, p.n, p.m, p.axis) == ((8, 1), 2, 4, 0)
  np.testing.assert_array_equal(n_m.unpack(p), kernel * mask)


@pytest.mark.parametrize("shape, n, m", [((16, 6), 2, 4), ((3, 3, 8, 5), 1, 4),
                                         ((12,), 2, 3), ((8, 4), 4, 8)])
def test_pack_unpack_round_trip_is_exact_jitted(shape, n, m):
  kernel = jax.random.normal(jax.random.key(0), shape)
  dense = {"k": jnp.ones(shape, bool)}
  mask = pruning.prune(dense, {"k": jnp.abs(kernel)}, 1 - n / m,
                       structure=f"{n}:{m}")["k"]
  p = n_m.pack(kernel, mask, n, m)
  axis = structure.reduction_axis(len(shape))
  assert p.values.shape[0] == shape[axis] * n // m
  assert jnp.asarray(mask).sum() == shape[axis] // m * n * (
      np.prod(shape) // shape[axis])
  got = jax.jit(n_m.unpack)(p)
  np.testing.assert_array_equal(got, np.where(mask, kernel, 0))
  assert got.dtype == kernel.dtype


def test_matmul_equals_the_masked_dense_matmul():
  kernel = jax.random.normal(jax.random.key(1), (64, 24))
  x = jax.random.normal(jax.random.key(2), (5, 7, 64))
  mask = pruning.prune({"k": jnp.ones(kernel.shape, bool)},
                       {"k": jnp.abs(kernel)}, 0.5, structure="2:4")["k"]
  p = n_m.pack(kernel, mask, 2, 4)
  got = jax.jit(n_m.matmul)(x, p)
  want = x @ (kernel * mask)
  assert got.shape == (5, 7, 24)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # A packed kernel is a pytree: a new kernel of the same pattern and shape
  # reuses the compiled program.
  assert jax.tree.leaves(p)[0] is p.values


def test_pack_refuses_a_mask_that_is_not_n_m():
  kernel = np.ones((8, 2), np.float32)
  mask = np.ones((8, 2), bool)
  mask[4:7, 1] = False  # Column 0 keeps all 4 of group 0.
  with pytest.raises(LotteryError, match=r"^fc1/kernel: the mask is not 2:4 "
                     r"along axis 0: group 0 \(positions 0..3\) of column "
                     r"\(0,\) keeps 4 weights$"):
    n_m.pack(kernel, mask, 2, 4, name="fc1/kernel")
  with pytest.raises(LotteryError, match="length 6 is not a multiple of 4"):
    n_m.pack(np.ones((6, 2)), np.zeros((6, 2), bool), 2, 4)
  with pytest.raises(LotteryError, match=r"mask has shape \(8, 1\)"):
    n_m.pack(kernel, mask[:, :1], 2, 4)
  with pytest.raises(LotteryError, match="N < M"):
    n_m.pack(kernel, mask, 4, 4)


def test_matmul_refuses_a_conv_kernel_and_logs_its_fallback_once(monkeypatch):
  p = n_m.pack(np.ones((1, 1, 4, 2)), np.zeros((1, 1, 4, 2), bool), 1, 2)
  with pytest.raises(LotteryError, match=r"^n_m.matmul: takes a packed Dense "
                     r"kernel \(K, O\), not one of shape \(1, 1, 4, 2\)$"):
    n_m.matmul(jnp.ones((1, 4)), p)
  lines = []
  monkeypatch.setattr(logging, "log_first_n",
                      lambda level, fmt, count, *a: lines.append(
                          (level, fmt % a)))
  q = n_m.pack(np.ones((4, 2)), np.eye(4, 2) > 0, 1, 2)
  np.testing.assert_array_equal(n_m.matmul(jnp.ones((1, 4)), q), [[1, 1]])
  assert lines == [(logging.WARNING, n_m.fallback_note())]
  note = lines[0][1]
  assert "no N:M sparse kernel" in note and jax.__version__ in note
