r"""XLA:CPU: a transpose fused with the element-wise chain that feeds it.

  python -m experiments.repro_transpose_fusion

A (128, 32, 32, 16) -> (16, 32, 32, 128) transpose (batch innermost, as a
convolution's kernel gradient needs its input) of three residual blocks'
BatchNorm-like maps, adds and ReLUs: XLA:CPU fuses the chain into the
transpose's loop, which recomputes it reading every operand with a 64 KB
stride; the transpose of an array and the chain alone are each a few ms.
Half of ResNet-20's CPU train step was such transposes (docs/performance.md).
The fourth timing is the workaround `lottery.models.convolution` ships: the
chain's result passes through a conditional (`convolution._unfused`) that XLA
does not fuse across, so the transpose reads it once, computed.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lottery.models import convolution

T = (3, 1, 2, 0)  # (N, H, W, C) -> (C, H, W, N)


def chain(a, b, c, s):
  h = jnp.maximum(a * s + 1, 0)
  h = jnp.maximum(b * s - 1 + h, 0)
  return jnp.maximum(c * s + 2 + h, 0)


def main(repeats: int = 9):
  rng = np.random.default_rng(0)
  a, b, c = (jnp.asarray(rng.normal(size=(128, 32, 32, 16)), jnp.float32)
             for _ in range(3))
  s = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
  plain = jax.jit(lambda a: jnp.transpose(a, T))
  fused = jax.jit(lambda *v: jnp.transpose(chain(*v), T))
  alone = jax.jit(chain)
  unfused = jax.jit(lambda *v: jnp.transpose(convolution._unfused(chain(*v)),
                                             T))
  fns = {"transpose of an array": lambda: plain(a),
         "the chain alone": lambda: alone(a, b, c, s),
         "transpose of the chain": lambda: fused(a, b, c, s),
         "behind a conditional": lambda: unfused(a, b, c, s)}
  for f in fns.values():
    jax.block_until_ready(f())
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - start)
  for k, ts in times.items():
    print(f"{k:24s} {1e3 * statistics.median(ts):7.1f} ms")


if __name__ == "__main__":
  main()
