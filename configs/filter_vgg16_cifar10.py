"""VGG-16 on CIFAR-10: filter pruning by L1 norm, then fine-tuning, after Li
et al. 2017 ("Pruning Filters for Efficient ConvNets", ICLR), with Liu et al.
2019's scratch control.

Round 0 trains the dense network (VGG-16 with BatchNorm, OpenLTH's CIFAR
layout, with the training of configs/resnet20_cifar10.py, as the VGG-16
stability recipe: SGD 0.1 with momentum 0.9, weight decay 1e-4, batch 128,
63K iterations with the rate x0.1 at 32K and 48K; random crops and flips).
Round 1 removes, in one shot, 20% of the filters (output channels) of every
conv layer, those with the smallest L1 norm (`pruning.structure='neuron'`,
`group_score='l1'`, layerwise), and fine-tunes the survivors at the final
rate (`pruning.reset='finetune'`).
The `scratch` control trains the pruned architecture from a fresh
initialization for as many steps (Liu et al. 2019's scratch-E).

Differences from the paper: Li et al. prune 50% of the filters of conv 1 and
convs 8-13 only (the layers their sensitivity analysis found robust) and
fine-tune 40 epochs at rate 0.001; here every layer loses the same share (the
neuron structure takes no per-layer rates), which removes about as many
FLOPs (1 - 0.8^2 = 36% of every conv but the first; theirs 34%) but fewer
parameters (~36% against their 64%), and fine-tuning lasts as long as the
dense training. A filter's L1 norm here also counts the next layer's kernel
rows that read it (the unit's weights: `lottery.structure`).

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.imp --config=configs/filter_vgg16_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/filter
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.imp --config=configs/filter_vgg16_cifar10.py:quick ...
Export the pruned network (a plain, smaller VGG-16; `lottery.export`):
  python -c "import lottery; lottery.export_ticket('/tmp/filter', \\
      '/tmp/filter_vgg16', 1)"

Expected (paper, Table 1; trained in Torch7 on a GPU, ≈ from memory where not
in the text): dense 93.25%, VGG-16-A (34% fewer FLOPs, 64% fewer parameters)
93.40% after fine-tuning. Liu et al. 2019 (PyTorch, GPU; ≈ recalled, mean
of 5 runs): VGG-16-A fine-tuned ≈93.41, scratch-E ≈93.62, scratch-B ≈93.78
(dense ≈93.63): trained from scratch, the pruned architecture does as well.
Not measured here: a 63K-step round takes about a day on a 2-core CPU.
"""

from configs import resnet20_cifar10

ARGS = ("", "quick")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  # The CIFAR training of the ResNet-20 recipe (':quick': width 4, 20 steps).
  c = resnet20_cifar10.get_config(arg)
  c.model.name = "vgg16"
  c.pruning.update(fraction=0.2, rounds=1, scope="layerwise",
                   prunable=(".*kernel",), reset="finetune", rewind_step=0,
                   structure="neuron", group_score="l1")
  c.controls = ("scratch",)
  return c
