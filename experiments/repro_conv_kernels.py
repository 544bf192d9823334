r"""ResNet-20's 3x3 convolutions on XLA:CPU's two kernels, and PyTorch's.

  python -m experiments.repro_conv_kernels [--batch=128] [--repeats=20]

For each stage's shape (batch 128; 32x32x16, 16x16x32, 8x8x64), times the
forward convolution and the kernel gradient in the canonical form that
`lottery.models.convolution` writes (input (C, H, W, N), "kernel" (H, W, N,
O)), compiled with XLA's default (YNNPACK) and with `xla_options.CPU_OPTIONS`
(Eigen), in one process; with PyTorch installed, also oneDNN's forward,
input-gradient and kernel-gradient primitives (`convolution_backward`) at
PyTorch's default threads, denormals flushed. Prints ms and GFLOP/s
(2 * N * H * W * C * O * 9 each), the calls alternating
(docs/performance.md).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from jax import lax

from experiments import timing
from lottery import xla_options

_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")

DN = ("NHWC", "HWIO", "NHWC")
STAGES = ((32, 16), (16, 32), (8, 64))  # (H = W, channels)


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=DN)


def _medians(calls: dict, repeats: int) -> dict:
  """{name: median seconds of `calls[name]()`}, the calls alternating."""
  def timed(name):
    start = time.perf_counter()
    jax.block_until_ready(calls[name]())
    return time.perf_counter() - start
  return timing.median_times(timed, calls, repeats)


def _torch_calls(n, h, c):
  """PyTorch's three primitives at these shapes, or None without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_flush_denormal(True)
  x, g = torch.randn(n, c, h, h), torch.randn(n, c, h, h)
  w = torch.randn(c, c, 3, 3)

  def backward(which):
    return lambda: torch.ops.aten.convolution_backward(
        g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, which)
  return {"forward": lambda: torch.nn.functional.conv2d(x, w, padding=1),
          "input gradient": backward([True, False, False]),
          "kernel gradient": backward([False, True, False])}


def main(_):
  n, repeats = _BATCH.value, _REPEATS.value
  rng = np.random.default_rng(0)
  for h, c in STAGES:
    x = jnp.asarray(rng.normal(size=(n, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, c, c)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(n, h, h, c)), jnp.float32)
    xt, gt = jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3))
    flops = 2 * n * h * h * c * c * 9
    calls = {}
    for kernel, options in (("YNNPACK", None),
                            ("Eigen", xla_options.CPU_OPTIONS)):
      fwd = jax.jit(_conv, compiler_options=options)
      calls[kernel, "forward"] = functools.partial(fwd, x, w)
      calls[kernel, "kernel gradient"] = functools.partial(fwd, xt, gt)
    for name, call in (_torch_calls(n, h, c) or {}).items():
      calls["PyTorch (oneDNN)", name] = call
    rows = {}
    for (kernel, name), t in _medians(calls, repeats).items():
      rows.setdefault(kernel, {})[name] = t
    print(f"{n}x{h}x{h}x{c}, 3x3, {c}->{c}:")
    for kernel, times in rows.items():
      cells = "  ".join(f"{k} {1e3 * t:5.1f} ms ({flops / t / 1e9:4.0f} GF/s)"
                        for k, t in times.items())
      print(f"  {kernel:17s} {cells}")


if __name__ == "__main__":
  app.run(main)
