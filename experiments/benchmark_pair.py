"""Replicates trained in one program against single trainings, on one
device or split across host devices (no flags: importable anywhere).

`replicate_rates` times a network's masked train loop (LeNet-300-100, batch
60, random MNIST-shaped inputs; or `RESNET20`) with 1 and with several
replicates stacked in one compiled program, in replicate-steps per second.
On one device the replicates run as `lottery.loop.Loop` lays them out
(`replica_form`: unrolled on the CPU, vmapped elsewhere), and `forms` times
them in other forms beside it; with `split=True` (and as many devices as the
largest count) they lie on a mesh's replicate axis (`lottery.parallel`),
one per device.

`pair_on_host_devices` runs that in a fresh process whose CPU is split into
`devices` host devices (`--xla_force_host_platform_device_count`): the
stability analysis's pair of copies one per device (as `Stability.stacked`
lays out one replicate's pair) against one copy on one device
(docs/performance.md has the measurements).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

from experiments import timing
from lottery import config as config_lib
from lottery import loop
from lottery import masks
from lottery import models
from lottery import optim
from lottery import parallel
from lottery import pruning
from lottery import rng as rng_lib
from lottery import scores
from lottery import step

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (model, input shape, batch, optimizer, learning rate): LeNet-300-100 with
# OpenLTH's optimizer, ResNet-20 with configs/resnet20_cifar10.py's.
LENET = ("lenet_300_100", (28, 28, 1), 60, "adam", 1.2e-3)
RESNET20 = ("resnet20", (32, 32, 3), 128, "sgd", 0.1)


def replicate_rates(steps: int, repeats: int, counts=(1, 8),
                    split: bool = False, forms=(), spec=LENET) -> dict:
  """Replicate-steps per second for each count of replicates (`counts`),
  the variants alternating (`timing.median_times`): {count: rate}, and
  {f"{count}_{form}": rate} for each count above 1 in each replicate form
  of `forms` ('vmap', 'unroll': `lottery.loop.replica_form`; the form the
  loop picks is timed once).

  With `split`, a count above 1 trains on a mesh with that many devices on
  its replicate axis (it needs `jax.device_count()` >= the count); a single
  replicate trains on the first device."""
  model_name, shape, batch, opt, lr = spec
  t = config_lib.base_config().training
  t.update(optimizer=opt, learning_rate=lr)
  rng = np.random.default_rng(0)
  n = 600
  x = rng.normal(size=(n,) + shape).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  model = models.get(model_name, 10)
  init = jax.jit(lambda k: model.init(rng_lib.flat(k), x[:1]))
  tx = optim.make_optimizer(t)
  apply_fn = step.flax_apply(model)
  train, evaluate = (step.make_train_step(apply_fn, tx),
                     step.make_eval_step(apply_fn))
  form = loop.choose_form("auto", None)
  lrs = np.full(steps, lr, np.float32)
  runs, same = {}, {}
  variants = list(counts) + [f"{c}_{f}" for c in counts if c > 1
                             for f in forms]
  for v in variants:
    c, _, replicas = str(v).partition("_")
    c = int(c)
    mesh = parallel.make_mesh(c, batch) if split and c > 1 else None
    if replicas and replicas == loop.replica_form("auto", mesh):
      same[v] = c  # The loop's own form: timed once.
      continue
    lp = loop.Loop(train, evaluate, form=form, mesh=mesh,
                   replicas=replicas or "auto")
    data = loop.put_data(x, y, x[:100], y[:100], mesh=mesh)
    reps = []
    for i in range(c):
      variables = dict(init(jax.random.key(i)))
      params = variables.pop("params")
      mask = pruning.prune(masks.make_mask(params), scores.magnitude(params),
                           0.5)
      reps.append(step.init_state(params, tx, mask=mask, seed=i,
                                  model_state=variables or None))
    ix = [loop.batch_indices(n, batch, i, 0, steps) for i in range(c)]
    if c == 1:
      runs[v] = [lp, data, reps[0], ix[0]]
      continue
    state = loop.stack_states(reps)
    if mesh is not None:  # Laid out as the loop returns it (as jobs do).
      state = parallel.put_tree(state, parallel.state_sharding(mesh, state,
                                                               True))
    runs[v] = [lp, data, state, np.stack(ix, axis=1)]

  def timed(v):
    lp, data, state, idx = runs[v]
    start = time.perf_counter()
    state, losses = lp.run(state, data, idx, lrs)
    jax.block_until_ready(state)
    assert np.all(np.isfinite(losses)), v
    runs[v][2] = state
    return time.perf_counter() - start

  times = timing.median_times(timed, list(runs), repeats)
  times.update({v: times[c] for v, c in same.items()})
  return {v: int(str(v).partition("_")[0]) * steps / times[v]
          for v in variants}


_CHILD = """
import json, sys
from experiments import benchmark_pair
rates = benchmark_pair.replicate_rates(int(sys.argv[1]), int(sys.argv[2]),
                                       counts=(1, 2), split=True)
print(json.dumps({str(c): r for c, r in rates.items()}))
"""


def pair_on_host_devices(steps: int, repeats: int, devices: int = 2) -> dict:
  """The pair of copies on `devices` host devices (a fresh process): the
  rates of one replicate and of the pair split across the devices, and
  pair_vs_two_host_devices = (time of the pair) / (time of two single
  trainings) = rate_1 / rate_2 (target <= 0.8 on the CPU).

  Raises:
    RuntimeError: with the end of the child's stderr, if it fails.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": (
      f"{flags} --xla_force_host_platform_device_count={devices}").strip()}
  res = subprocess.run([sys.executable, "-c", _CHILD, str(steps),
                        str(repeats)], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=False)
  if res.returncode:
    raise RuntimeError(res.stderr[-3000:])
  rates = json.loads(res.stdout.strip().splitlines()[-1])
  one, pair = rates["1"], rates["2"]
  return {"host_devices": devices,
          "host_devices_1_steps_per_s": float(f"{one:.4g}"),
          "host_devices_2_steps_per_s": float(f"{pair:.4g}"),
          "pair_vs_two_host_devices": round(one / pair, 4)}
