"""VGG-16 on CIFAR-10: pruning at initialization as in Tanaka et al. 2020
(SynFlow), Fig. 6, with Frankle et al. 2021's sanity checks.

The settings of Synaptic-Flow's singleshot runs (their Results/data/*/
args.json): VGG-16 with BatchNorm in OpenLTH's layout (lottery_vgg16_bn; here
`vgg16`, see lottery/models/vgg.py), SGD 0.1 with momentum 0.9, weight decay
1e-4, batch 128, 160 epochs (62,560 steps) with the rate x0.1 at epochs 60
and 120; random crops and flips; weights of every conv and of the dense
layer prunable, biases and BatchNorm not, global scope; 100 examples to score
(prune_dataset_ratio 10 x 10 classes); SynFlow 100 rounds, the others one.
Densities 10^(-1 ... -3) in steps of 10^-0.5 (compression 10x ... 1000x).

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.pai --config=configs/pai_vgg16_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/pai_vgg16
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.pai --config=configs/pai_vgg16_cifar10.py:quick ...

Expected (paper, Fig. 6, VGG-16 CIFAR-10; means of the 3 runs in
Synaptic-Flow's Results/data/Accuracy_CompRatio/cifar10_lottery_vgg16_bn-*.npy,
top-1 %, dense ~93.5):
  density   SynFlow  SNIP  GraSP  magnitude  random
  10%        93.3    92.3  91.8    93.1      91.1
  3.16%      92.1    91.1  90.2    92.0      87.5
  1%         90.1    89.1  87.5    89.8      79.1
  0.316%     86.8    84.6  82.7    10.0      49.1
  0.1%       80.4    76.3  70.9    10.0      10.0
(magnitude and random collapse to chance at high compression; SynFlow does
not). Not measured here: a 62K-step run takes about a day on a 2-core CPU.
"""

from lottery.config import base_config

ARGS = ("", "quick")


def get_config(arg: str = ""):
  c = base_config()
  c.method = "pai"
  c.data.name = "cifar10"
  c.data.augment = "crop_flip"
  c.model.name = "vgg16"
  c.training.update(steps=62_560, batch_size=128, optimizer="sgd",
                    learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                    schedule="step", lr_boundaries=(23_460, 46_920),
                    lr_decay=0.1, eval_every=3_910, checkpoint_every=3_910)
  c.pruning.update(prunable=(".*kernel",))
  c.pai.update(methods=("snip", "grasp", "synflow", "magnitude", "random"),
               densities=(0.1, 0.0316, 0.01, 0.00316, 0.001),
               checks=("shuffle", "reinit", "invert"), iterations=1,
               method_iterations="synflow=100", scope="global",
               batch_size=100, dense=True)
  if arg == "quick":
    c.model.width = 4
    c.training.update(steps=20, batch_size=16, lr_boundaries=(10, 15),
                      eval_every=10, checkpoint_every=10)
    c.pai.update(densities=(0.1,), method_iterations="synflow=4",
                 batch_size=16)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  return c
