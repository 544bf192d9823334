"""Instability analysis of LeNet-300-100 on MNIST (Frankle, Dziugaite, Roy
& Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis"), trained as configs/lenet_mnist.py (Frankle & Carbin 2019's
recipe: Adam 1.2e-3, batch 60, 50K iterations).

Needs MNIST prepared for TFDS (see the README):
  python -m experiments.run --config=stability_lenet_mnist \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/lmc_lenet
  # The tickets of an IMP run of configs/lenet_mnist.py (rounds 3, 7, 12:
  # 51.3%, 21.1% and 7.0% of the weights):
  ... --config.stability.source_workdir=/tmp/lenet \\
      --config.stability.sources="('dense', 'round=3', 'round=7', 'round=12')"
Quick variant (seconds, any 28x28x1 data): `stability_lenet_mnist:quick`.

Expected (paper): LeNet-300-100 is stable to SGD noise at initialization
(k = 0: a barrier of about 0), and so are its IMP tickets rewound to
initialization down to the sparsities where they match dense accuracy: the
small-scale setting in which rewinding to step 0 works.
"""

from configs import lenet_mnist
from lottery import stability

ARGS = ("", "quick")


def get_config(arg: str = ""):
  c = stability.recipe(lenet_mnist.get_config(), (0, 25, 100, 500, 2_000))
  if arg == "quick":
    c = stability.recipe(lenet_mnist.get_config("quick"), (0, 10), points=3)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  return c
