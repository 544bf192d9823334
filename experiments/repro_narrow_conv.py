r"""XLA:CPU: convolutions of a few channels run far below its rate for wide ones.

  python -m experiments.repro_narrow_conv [BATCH]

A 3x3, stride-1, SAME convolution of BATCH (default 256) images, for a few
channel counts and sizes: `lax.conv_general_dilated` (a library kernel,
compiled with `lottery.xla_options.options()`, as the framework compiles its
programs) against the same convolution as a sum over the kernel's 9 taps and
the input channels of shifted input slices times the kernel's rows
(`lottery.models.convolution._taps`, one fused loop). The library kernel
takes about as long for 2 channels as for 16; the sum's time grows with
input x output channels and wins up to about 8 of each. The networks
`lottery.shrink` returns (`narrow` = `lottery.models.convolution.NARROW`, 8)
run the inference of convolutions that narrow in that form on the CPU
(docs/performance.md, "Structured pruning: what shrink buys").
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lottery import xla_options
from lottery.models import convolution

PAD = ((1, 1), (1, 1))
SHAPES = ((32, 2, 2), (32, 4, 8), (32, 8, 8), (32, 3, 16), (32, 12, 12),
          (32, 16, 16), (16, 4, 4), (16, 8, 8), (16, 16, 16), (8, 6, 6),
          (8, 8, 8), (8, 16, 16))


def main(batch: int = 256, repeats: int = 9):
  rng = np.random.default_rng(0)
  options = xla_options.options()
  print(f"batch {batch}, 3x3 stride 1; ms per call (median of {repeats})")
  print(f"{'H=W':>4} {'in':>3} {'out':>3} {'library':>8} {'taps':>8} "
        f"{'library / taps':>15}")
  for size, ci, co in SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, size, size, ci)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, ci, co)), jnp.float32)
    fns = {
        "library": lambda x, w: lax.conv_general_dilated(
            x, w, (1, 1), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        "taps": lambda x, w: convolution._taps(x, w, (1, 1), PAD)}
    compiled = {k: jax.jit(f).lower(x, w).compile(compiler_options=options)
                for k, f in fns.items()}
    np.testing.assert_allclose(compiled["library"](x, w),
                               compiled["taps"](x, w), rtol=1e-4, atol=1e-4)
    times = {k: [] for k in fns}
    for _ in range(repeats):  # Alternating, so load changes hit both.
      for k, f in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(f(x, w))
        times[k].append(1e3 * (time.perf_counter() - start))
    lib, taps = (statistics.median(times[k]) for k in fns)
    print(f"{size:4d} {ci:3d} {co:3d} {lib:8.3f} {taps:8.3f} "
          f"{lib / taps:15.2f}", flush=True)


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:2]))
