"""ResNet-20 on CIFAR-10: IMP with rewinding, Frankle et al. 2020 (LMC paper).

OpenLTH's CIFAR ResNet-20 (272,474 parameters, BatchNorm; its BatchNorm
scales drawn from U[0, 1), OpenLTH's default `batchnorm_init='uniform'`:
model.bn_init, which the recipes built on this one inherit), SGD 0.1 with
momentum 0.9 and weight decay 1e-4, batch 128, 63K iterations (160 epochs),
learning rate x0.1 at 32K and 48K; padded random crops and horizontal flips;
global magnitude pruning of all conv and dense kernels, 20% per round; weights
rewound to iteration 2000 of the dense run (argument `k<step>` picks another
rewind step, e.g. `:k500`; `:k0` is the original rewind to initialization).

Needs CIFAR-10 prepared for TFDS in array_record format (see the README):
  python -m experiments.imp --config=configs/resnet20_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/resnet20
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.imp --config=configs/resnet20_cifar10.py:quick ...

Expected (paper): dense test accuracy ~91.7%; rewound to ~500-2000
iterations, IMP finds matching tickets (within 0.2 points of dense) down to
~16.8% of the weights remaining (round 8 of the 12 here, which end at 6.9%);
rewound to initialization (k0) it does not match. On a 2-core CPU a training
step takes over a second (a 63K-step round: about a day): use an accelerator.
"""

from lottery.config import base_config

ARGS = ("", "k500", "k0", "quick")


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "cifar10"
  c.data.validation_size = 0
  c.data.augment = "crop_flip"
  c.model.update(name="resnet20", bn_init="uniform")
  c.training.update(steps=63_000, batch_size=128, optimizer="sgd",
                    learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                    schedule="step", lr_boundaries=(32_000, 48_000),
                    lr_decay=0.1, eval_every=1_000, checkpoint_every=5_000)
  c.pruning.update(fraction=0.2, rounds=12, scope="global",
                   prunable=(".*kernel",), layer_fractions="",
                   reset="rewind", rewind_step=2_000)
  c.controls_every = 4  # Each control costs a full 63K-step run.
  if arg == "quick":
    c.model.width = 4
    # Every chunk of the loop (rewind capture, evaluation, checkpoint) is 5
    # steps long, so the train step compiles once for all of them.
    c.training.update(steps=20, batch_size=16, lr_boundaries=(10, 15),
                      eval_every=5, checkpoint_every=10)
    c.pruning.update(rounds=2, rewind_step=5)
  elif arg.startswith("k") and arg[1:].isdigit():
    c.pruning.rewind_step = int(arg[1:])
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS}, "
                     "or k<rewind step>)")
  return c
