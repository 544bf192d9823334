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

':cnn' (':cnn,quick') prunes the MNIST-1D CNN at init (configs/mnist1d.py:cnn's
model and training: Adam 1e-2, 4000 steps) at 40.96%, 16.78% and 6.87%
(0.8^4, 0.8^8, 0.8^12: that recipe's IMP rounds 4, 8 and 12, whose per-layer
rounding gives 40.96%, 16.76% and 6.89%). Measured (docs/results.md,
seeds 0-2, at 16.8%): SynFlow 78.7, GraSP 74.1, SNIP 70.8, random 50.4;
magnitude empties the output layer and stays at chance from 16.8%.

Expected (literature, on other models): every method above random pruning,
below IMP; shuffle and reinit barely change SNIP / GraSP / SynFlow, invert
hurts; at extreme sparsity magnitude and SNIP can disconnect layers where
SynFlow does not. Measured here: docs/results.md, "Pruning at
initialization on MNIST-1D".
"""

from configs import mnist1d
from lottery.config import base_config

ARGS = ("", "quick", "cnn", "cnn,quick")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
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
  if arg.startswith("cnn"):
    # configs/mnist1d.py:cnn's model and training, at the densities of its
    # IMP rounds 4, 8 and 12 (0.8^4, 0.8^8, 0.8^12 of the kernels).
    mnist1d.use_cnn(c)
    c.pai.densities = mnist1d.CNN_DENSITIES
  if arg.endswith("quick"):
    c.training.update(steps=20, eval_every=10, checkpoint_every=10)
    c.pai.update(densities=c.pai.densities[::2][:2],
                 method_iterations="synflow=10")
  return c
