"""Instability analysis of VGG-16 on CIFAR-10 (Frankle, Dziugaite, Roy &
Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"):
VGG-16 with BatchNorm (`vgg16`) trained as its IMP recipe
(configs/imp_vgg16_cifar10.py: the paper's ResNet-20 training, SGD 0.1,
momentum 0.9, weight decay 1e-4, batch 128, 63K iterations, x0.1 at 32K and
48K, crops and flips; the convolution kernels prunable), so that the tickets
of an `imp_vgg16_cifar10` workdir fit (`stability.source_workdir`). The
running statistics of every point of the path are recomputed over the
training set before it is evaluated.

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.run --config=stability_vgg16_cifar10 \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/lmc_vgg
Quick variant (seconds, any 32x32x3 data): `stability_vgg16_cifar10:quick`.

Expected (paper, ≈): dense VGG-16 (≈93.7%) becomes stable early in
training, by k ≈ 1000 iterations; IMP rewound there finds matching tickets
down to ≈1.5% density. On a 2-core CPU: use an accelerator.
"""

from configs import imp_vgg16_cifar10
from lottery import stability

ARGS = ("", "quick")
STEPS = (0, 100, 500, 1_000, 2_000, 5_000)


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  train = imp_vgg16_cifar10.get_config(arg)
  return stability.recipe(train, (0, 10) if arg else STEPS,
                          points=3 if arg else 30)
