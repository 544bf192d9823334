r"""Throughput of the masked train step against the same step without a mask.

  python -m experiments.benchmark [--steps=200] [--repeats=10]

LeNet-300-100 at batch 60 on MNIST-shaped synthetic data (the inputs' values do
not change the arithmetic). Both variants run the same compiled `Trainer` code
path -- `lax.scan` over `--steps` steps with the data on the device -- the
masked one with a 50%-density mask on every kernel, the dense one with an
all-None mask (no masking ops at all). Timings alternate between the two so
that machine noise hits both alike; each figure is the median over repeats.
The last line printed is a JSON object with the figures and their ratio
(target: masked >= 0.95 x dense).
"""

import json
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from lottery import config as config_lib
from lottery import masks
from lottery import models
from lottery import optim
from lottery import pruning
from lottery import scores
from lottery import train

_STEPS = flags.DEFINE_integer("steps", 200, "Steps per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per variant.")
_BATCH = flags.DEFINE_integer("batch_size", 60, "Batch size.")


def main(argv):
  del argv
  t = config_lib.base_config().training
  t.update(optimizer="adam", learning_rate=1.2e-3)
  rng = np.random.default_rng(0)
  n = 6000
  x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, n).astype(np.int32)
  model = models.get("lenet_300_100", 10)
  params = model.init(jax.random.key(0), x[:1])["params"]
  mask = masks.make_mask(params)
  mask = pruning.prune(mask, scores.magnitude(params), 0.5)
  no_mask = jax.tree.map(lambda _: None, params)
  trainer = train.Trainer(model, optim.make_optimizer(t))
  data = train.put_data(x, y, x[:100], y[:100])
  steps = _STEPS.value
  idx = train.batch_indices(n, _BATCH.value, 0, 0, steps)
  lrs = np.full(steps, t.learning_rate, np.float32)

  states = {"masked": trainer.init_state(params),
            "dense": trainer.init_state(params)}
  variant_mask = {"masked": mask, "dense": no_mask}

  def timed(name):
    start = time.perf_counter()
    states[name], losses = trainer.run(states[name], variant_mask[name], data,
                                       idx, lrs)
    jax.block_until_ready(states[name])
    assert np.all(np.isfinite(losses))
    return time.perf_counter() - start

  for name in states:  # Compile and warm up.
    timed(name)
  times = {name: [] for name in states}
  for _ in range(_REPEATS.value):
    for name in states:
      times[name].append(timed(name))
  rate = {name: steps / statistics.median(ts) for name, ts in times.items()}
  result = {
      "masked_steps_per_s": round(rate["masked"], 1),
      "dense_steps_per_s": round(rate["dense"], 1),
      "ratio": round(rate["masked"] / rate["dense"], 4),
      "model": "lenet_300_100", "batch_size": _BATCH.value,
      "steps_per_call": steps, "repeats": _REPEATS.value,
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.default_backend(), "cpu": platform.processor(),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
