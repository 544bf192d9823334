"""Instability analysis on MNIST-1D (Frankle, Dziugaite, Roy & Carbin 2020,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis"), the default
`stability` run.

  python -m experiments.run --config=stability_mnist1d --workdir=/tmp/lottery_runs/stability
  python -m experiments.run --config=stability_mnist1d:quick --workdir=...
  # Tickets of an IMP run (its rounds 4, 8 and 16: ~66%, 43% and 18% density):
  python -m experiments.run --config=stability_mnist1d --workdir=... \\
      --config.stability.source_workdir=/tmp/lottery_runs/mnist1d \\
      --config.stability.sources="('dense', 'round=4', 'round=8', 'round=16')"

For each rewind step k in {0, 25, 100, 250, 500} (of 1500) and each source
mask, two copies of the network at step k of the dense run train to the end
with different data orders; the error barrier along the linear path between
them (30 points) measures their instability. The training config is the
default IMP recipe's (configs/mnist1d.py), so that the dense run here is that
recipe's round 0 and its tickets' masks apply to the same weights.

Expected (the paper, on other networks): LeNet-300-100 on MNIST is stable at
k = 0 (barrier ~0); ResNet-20 on CIFAR-10 is unstable at k = 0 and stable
from k ~ 2000 of 63K steps (~3%); IMP subnetworks are matching only when
they are stable. Measured here: docs/stability.md.
"""

from configs import mnist1d
from lottery import stability

ARGS = ("", "quick")


def get_config(arg: str = ""):
  # The default IMP recipe's data, model, training and prunable weights.
  c = stability.recipe(mnist1d.get_config(), (0, 25, 100, 250, 500))
  if arg == "quick":
    c.training.update(steps=200, eval_every=50, checkpoint_every=100)
    c.stability.update(steps=(0, 20), points=10)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  return c
