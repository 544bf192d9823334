r"""XLA:CPU: a convolution's kernel gradient inside a loop runs as a loop nest.

  python -m experiments.repro_scan_conv

One SGD step on a 3x3 convolution's kernel (60x32x32x64 input, 64 filters),
called on its own and inside `lax.fori_loop`, with the kernel gradient from
`jax.grad` and written out in the canonical form. jax.grad's kernel gradient
is a convolution with dim_labels f01b_i01o->01bf; XLA:CPU's
ConvCanonicalization pass rewrites it to b01f_01io->b01f (Eigen/YNNPACK) in the
entry computation only, so inside the while body it is emitted as a naive
loop nest (`conv_general_dilated.N_elemental_kernel_module` in an
`--xla_dump_to` dump). The canonical form, explicit, runs at the same speed in
both places (and gives the same bits).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
x = jnp.asarray(np.random.default_rng(0).normal(size=(60, 32, 32, 64)),
                jnp.float32)
w0 = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 64, 64)) * 0.05,
                 jnp.float32)


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=DN)


def grad_jax(w):
  return jax.grad(lambda w: jnp.sum(conv(x, w) ** 2))(w)


def grad_canonical(w):
  g = 2 * conv(x, w)
  # Batch and features swapped: (C, H, W, N) input, (H, W, N, O) kernel.
  dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)),
                                jnp.transpose(g, (1, 2, 0, 3)), (1, 1),
                                ((1, 1), (1, 1)), dimension_numbers=DN)
  return jnp.transpose(dw, (1, 2, 0, 3))


def main(steps: int = 2):
  for name, grad in (("jax.grad", grad_jax), ("canonical", grad_canonical)):
    one = jax.jit(lambda w: w - 1e-6 * grad(w))
    looped = jax.jit(lambda w: lax.fori_loop(
        0, steps, lambda i, w: w - 1e-6 * grad(w), w))
    jax.block_until_ready((one(w0), looped(w0)))  # compile
    start = time.perf_counter()
    w = w0
    for _ in range(steps):
      w = one(w)
    jax.block_until_ready(w)
    alone = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    w_loop = jax.block_until_ready(looped(w0))
    in_loop = (time.perf_counter() - start) / steps
    print(f"{name:10s} alone {alone:.3f} s/step, in fori_loop {in_loop:.3f} "
          f"s/step ({in_loop / alone:.1f}x), same result: "
          f"{bool(jnp.array_equal(w, w_loop))}")


if __name__ == "__main__":
  main()
