"""ResNet-20 on CIFAR-10: pruning at initialization in the setting of
Tanaka et al. 2020 (SynFlow), with Frankle et al. 2021's sanity checks.

OpenLTH's CIFAR ResNet-20 (`resnet20`, BatchNorm; Synaptic-Flow's
lottery_resnet20) trained with the settings of Synaptic-Flow's VGG-16 runs
(their Results/data/*/args.json): SGD 0.1, momentum 0.9, weight decay 1e-4,
batch 128, 160 epochs (62,560 steps), rate x0.1 at epochs 60 and 120; random
crops and flips; every conv and dense kernel prunable, global scope; 100
examples to score; SynFlow 100 rounds, the others one.

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.pai --config=configs/pai_resnet20_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/pai_r20
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.pai --config=configs/pai_resnet20_cifar10.py:quick ...

Expected: ResNet-20 is not in the paper's Fig. 6. Its nearest model there is
ResNet-18 on CIFAR-10 (means of the 3 runs in Synaptic-Flow's
Results/data/Accuracy_CompRatio/cifar10_tiny_resnet18-*.npy, top-1 %,
dense ~95):
  density   SynFlow  SNIP  GraSP  magnitude  random
  10%        94.1    94.3  93.8    94.4      92.9
  3.16%      92.7    93.2  92.1    10.0      89.6
  1%         90.4    90.8  89.7    10.0      83.0
  0.316%     86.1    86.0  84.6    10.0      58.5
  0.1%       79.9    78.6  71.4    10.0      13.5
ResNet-20 (272K weights, 40x fewer than ResNet-18) should sit lower and
collapse earlier. Not measured here: a 62K-step run takes about a day on a
2-core CPU.
"""

from configs import pai_vgg16_cifar10

ARGS = pai_vgg16_cifar10.ARGS


def get_config(arg: str = ""):
  """configs/pai_vgg16_cifar10.py's Synaptic-Flow settings, with ResNet-20."""
  c = pai_vgg16_cifar10.get_config(arg)
  c.model.name = "resnet20"
  return c
