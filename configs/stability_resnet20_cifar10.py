"""Instability analysis of ResNet-20 on CIFAR-10 (Frankle, Dziugaite, Roy &
Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"),
trained as configs/resnet20_cifar10.py (SGD 0.1, momentum 0.9, weight decay
1e-4, batch 128, 63K iterations, crops and flips). BatchNorm: the running
statistics of every point of the path are recomputed over the training set
before it is evaluated (`lottery.stability.recompute_statistics`).

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.run --config=stability_resnet20_cifar10 \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/lmc_r20
  # Tickets of an IMP run of configs/resnet20_cifar10.py (its round 8, about
  # 16.8% of the weights):
  ... --config.stability.source_workdir=/tmp/resnet20 \\
      --config.stability.sources="('dense', 'round=8')"
Quick variant (seconds, any 32x32x3 data): `stability_resnet20_cifar10:quick`.

Expected (paper, ≈): dense ResNet-20 is unstable at initialization and
becomes stable (barrier below 2%) by k ≈ 2000 iterations (3% of training);
IMP finds matching tickets (dense ≈91.7%) down to ≈16.8% density only when
rewound to k ≈ 500-2000, where they are stable, and neither at k = 0. On a
2-core CPU a step takes over a second: use an accelerator.
"""

from configs import resnet20_cifar10
from lottery import stability

ARGS = ("", "quick")
STEPS = (0, 100, 500, 2_000, 5_000, 10_000)


def get_config(arg: str = ""):
  if arg == "quick":
    return stability.recipe(resnet20_cifar10.get_config("quick"), (0, 10),
                            points=3)
  if arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  return stability.recipe(resnet20_cifar10.get_config(), STEPS)
