"""Pruning at initialization on MNIST-1D: the default `experiments.pai` run.

The MNIST-1D MLP and training of configs/mnist1d.py (Adam 2e-2, batch 100,
1500 steps); kernels are prunable (as Synaptic-Flow's code, whose numbers
the papers compare; SNIP's own code also prunes biases), global scope. Methods SNIP, GraSP, SynFlow (100
rounds), magnitude and random at init, at densities 10%, 3%, 1%, 0.3%, each
with the shuffle / reinit / invert checks of Frankle et al. 2021, and the
dense network.

Command (one replicate; docs/results.md's table used --config.seeds.num=3):
  python -m experiments.pai --workdir=/tmp/lottery_runs/pai
Quick variant (seconds):
  python -m experiments.pai --config=configs/pai_mnist1d.py:quick --workdir=...

Expected (literature, on other models): every method above random pruning,
below IMP; shuffle and reinit barely change SNIP / GraSP / SynFlow, invert
hurts; at extreme sparsity magnitude and SNIP can disconnect layers where
SynFlow does not. Measured here: docs/results.md, "Pruning at
initialization on MNIST-1D".
"""

from lottery.config import base_config

ARGS = ("", "quick")


def get_config(arg: str = ""):
  c = base_config()
  c.method = "pai"
  c.data.name = "mnist1d"
  c.model.name = "mnist1d_mlp"
  c.training.update(steps=1500, batch_size=100, optimizer="adam",
                    learning_rate=2e-2, eval_every=500, checkpoint_every=500)
  c.pruning.update(prunable=(".*kernel",))
  c.pai.update(methods=("snip", "grasp", "synflow", "magnitude", "random"),
               densities=(0.1, 0.03, 0.01, 0.003),
               checks=("shuffle", "reinit", "invert"), iterations=1,
               method_iterations="synflow=100", scope="global",
               batch_size=100, dense=True)
  if arg == "quick":
    c.training.update(steps=20, eval_every=10, checkpoint_every=10)
    c.pai.update(densities=(0.1, 0.01), method_iterations="synflow=10")
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  return c
