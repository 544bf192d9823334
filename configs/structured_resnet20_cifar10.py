"""ResNet-20 on CIFAR-10: structured IMP with rewinding and the scratch
control, after Liu et al. 2019 ("Rethinking the Value of Network Pruning",
ICLR).

The ResNet-20 recipe of configs/resnet20_cifar10.py (OpenLTH's CIFAR
ResNet-20, SGD 0.1 with momentum 0.9, weight decay 1e-4, batch 128, 63K
iterations, rate x0.1 at 32K and 48K, crops and flips, weights rewound to
iteration 2000), pruning whole channels instead of weights: each round
removes 20% of the surviving inner channels of every block (conv1's filters
with bn1 and conv2's input channels) and of every stage's residual stream
(the convs that add into it with their BatchNorms, the convs that read it),
ranked by L1 norm, for 5 rounds (about 0.8^5 = 32.8% of each set's
channels left, each round's count rounded). Beside each round's ticket:

  scratch  the shrunk architecture trained from its own fresh initialization
           (Liu et al.'s scratch-E: as many steps as the ticket);
  reinit   the ticket's mask on a fresh initialization of the full network
           (Frankle & Carbin's random reinitialization).

Liu et al. ask whether pruning finds weights worth keeping or an
architecture: for structured pruning they find the second, and (their
Sec. 6) that a structured winning ticket's initialization does no better
than a random one at the usual rate 0.1.

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.imp --config=configs/structured_resnet20_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/sres20
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.imp \\
      --config=configs/structured_resnet20_cifar10.py:quick ...

Expected (Liu et al. 2019, Table 1, L1-norm filter pruning of Li et al.,
CIFAR-10, PyTorch on GPUs; ≈ recalled, mean of 5 runs; the paper has no
ResNet-20): ResNet-56 dense ≈93.14, pruned (-A) fine-tuned ≈92.97, scratch-E
≈92.96, scratch-B ≈93.09; ResNet-110-A fine-tuned ≈93.14, scratch-E
≈93.25.
So: scratch within noise of the ticket at every round, and reinit within
noise of it too (unlike unstructured IMP with rewinding). Not measured here:
a 63K-step round takes about a day on a 2-core CPU.
"""

from configs import resnet20_cifar10

ARGS = ("", "quick")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  # Its model, data, training and rewind step (':quick': 20 steps, rewind to
  # step 5, 2 rounds); 5 rounds of 20% of the units instead of 12 of 20% of
  # the weights.
  c = resnet20_cifar10.get_config(arg)
  c.pruning.update(rounds=2 if arg else 5, scope="layerwise",
                   structure="neuron", group_score="l1")
  c.controls = ("scratch", "reinit")
  c.controls_every = 1
  return c
