"""ResNet-20's linear path in three forms: the points vmapped together, one
point a step of a loop (`jax.lax.map`), and the points as separate
evaluations of one compiled function (what `stability.path_batch` chooses
between).

  python -m experiments.repro_path_forms EXAMPLES POINTS FORM

FORM is 'vmap', 'map' or 'sep'; run each in its own process. Random
32x32x3 inputs, two ResNet-20 initializations as the ends, a 50% magnitude
mask; every point's BatchNorm statistics recomputed over the examples'
whole batches of 128, then evaluated on the examples. Prints the first
call's time (with compilation) and two more calls'.
"""

import sys
import time

import jax
import numpy as np

from experiments import benchmark
from lottery import loop
from lottery import stability


def main(examples: int, points: int, form: str) -> None:
  if form not in ("vmap", "map", "sep"):
    raise SystemExit(f"FORM must be vmap, map or sep (got {form!r})")
  p = benchmark.path_setup("resnet20", (32, 32, 3), examples, 128)
  a, b, state, mask, apply_fn, eval_fn = (
      p[k] for k in ("a", "b", "state", "mask", "apply_fn", "eval_fn"))
  stats_x = p["stats"]["stats_x"]
  xs, ys, valid = loop.eval_batches(p["x"], p["y"], 1000)
  alphas = np.linspace(0, 1, points, dtype=np.float32)

  def one(alpha):
    params = stability.interpolate(a, b, alpha, mask)
    st = stability.recompute_statistics(apply_fn, params, state, stats_x)
    return eval_fn(params, st, xs, ys, valid)

  if form == "sep":
    f = jax.jit(one)
    run = lambda: [f(alpha) for alpha in alphas]
  elif form == "vmap":
    f = jax.jit(jax.vmap(one))
    run = lambda: f(alphas)
  else:
    f = jax.jit(lambda al: jax.lax.map(one, al))
    run = lambda: f(alphas)
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  print(f"{form}: first {times[0]:.2f} s, then "
        f"{', '.join(f'{t:.2f}' for t in times[1:])} s", flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
