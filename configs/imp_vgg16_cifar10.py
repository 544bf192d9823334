"""VGG-16 on CIFAR-10: IMP with rewinding, Frankle et al. 2020 (LMC paper).

OpenLTH's CIFAR VGG-16 (`vgg16`: 13 convolutions with BatchNorm, one dense
output layer; BatchNorm scales drawn from U[0, 1), model.bn_init='uniform',
OpenLTH's default) with the ResNet-20 recipe's training (configs/resnet20_cifar10.py:
SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, 63K iterations, x0.1 at
32K and 48K, crops and flips); global magnitude pruning of the convolution
kernels, 20% per round, the output layer not pruned (OpenLTH's VGG default,
`pruning_layers_to_ignore='fc.weight'`); weights rewound to iteration 1000
(argument `k<step>` picks another rewind step; `:k0` rewinds to
initialization).

Needs CIFAR-10 prepared for TFDS in array_record format (see the README):
  python -m experiments.imp --config=imp_vgg16_cifar10 \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/vgg16
Quick variant (seconds, any 32x32x3 data): `imp_vgg16_cifar10:quick`.

Expected (paper, ≈): dense ≈93.7%; rewound to k ≈ 1000, IMP finds matching
tickets (within 0.2 points of dense) down to ≈1.5% density (round 19 at 20%
a round; 25 rounds here, to 0.4%); rewound to initialization it does not.
Not run here: a 63K-step round takes about a day on a 2-core CPU.
"""

from configs import resnet20_cifar10

ARGS = ("", "k0", "quick")


def get_config(arg: str = ""):
  if arg and arg not in ARGS and not (arg.startswith("k") and
                                      arg[1:].isdigit()):
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS}, "
                     "or k<rewind step>)")
  c = resnet20_cifar10.get_config("quick" if arg == "quick" else "")
  c.model.name = "vgg16"
  c.pruning.update(prunable=("conv.*kernel",), rounds=25, rewind_step=1_000)
  if arg == "quick":
    c.pruning.update(rounds=2, rewind_step=5)
  elif arg:
    c.pruning.rewind_step = int(arg[1:])
  return c
