"""VGG-16 on CIFAR-10: filter pruning by L1 norm, then fine-tuning, as Li et
al. 2017's VGG-16-A ("Pruning Filters for Efficient ConvNets", ICLR), with
Liu et al. 2019's scratch control.

Round 0 trains the dense network (VGG-16 with BatchNorm, OpenLTH's CIFAR
layout, with the training of configs/resnet20_cifar10.py, as the VGG-16
stability recipe: SGD 0.1 with momentum 0.9, weight decay 1e-4, batch 128,
63K iterations with the rate x0.1 at 32K and 48K; random crops and flips).
Round 1 removes, in one shot, 50% of the filters (output channels) of conv 1
and of convs 8-13, those with the smallest L1 norm
(`pruning.structure='neuron'`, `group_score='l1'`, layerwise,
`pruning.fraction=0.5` with `pruning.layer_fractions='conv[2-7]/kernel=0'`
leaving convs 2-7 whole), and fine-tunes the survivors at the final rate,
0.001 (`pruning.reset='finetune'`).
The `scratch` control trains the pruned architecture from a fresh
initialization for as many steps (Liu et al. 2019's scratch-E).

What the pruning removes, measured on a random initialization at CIFAR
shapes and the real widths (this recipe's pruning, then `lottery.shrink`:
widths 32, 64, 128, 128, 256 x 9; pinned by `pytest -m slow
tests/test_configs.py -k vgg16_a`, JAX 0.10.2 on a 2-core AMD EPYC CPU box,
2026-12-06):
  parameters       14,728,266 -> 5,264,522: 64.3% fewer (paper: 64.0%,
                   1.5e7 -> 5.4e6)
  multiply-adds    313,201,664 -> 206,146,048: 34.2% fewer (paper: 34.2%,
                   3.13e8 -> 2.06e8), counting every tap of each 3x3 conv
                   (zero padding included) and the output layer, as the
                   paper does
  XLA FLOPs        495,832,704 -> 347,115,872: 30.0% fewer (cost analysis
                   of the jitted forward pass at batch 1, CPU)
The XLA count is lower because it counts only the taps of a padded conv
that fall inside its input: on the 2x2 maps of convs 11-13 that is 4 of 9,
on the 4x4 maps of convs 8-10 25 of 36, and those are the layers this
pruning thins most. The paper's model (its Table 1's layers, as recalled)
has a second dense layer, 512 x 512 (~0.26M parameters), that OpenLTH's
layout lacks; both counts here are of OpenLTH's layout.

Differences from the paper: fine-tuning lasts as long as the dense training
(63K steps, ~161 epochs, at 0.001) where the paper's lasts 40 epochs
(~15.6K steps): a `finetune` round trains `training.steps` at the
schedule's final rate, and a round has no length of its own. A filter's L1
norm here also counts the next layer's kernel rows that read it (the unit's
weights: `lottery.structure`), where the paper sums the filter's own kernel
only, so the filters chosen can differ (not their number). The paper trains
its own VGG-16 (Torch7) rather than OpenLTH's.

Needs CIFAR-10 prepared for TFDS (see the README):
  python -m experiments.imp --config=configs/filter_vgg16_cifar10.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/filter
Quick variant (seconds, any 32x32x3 data, e.g. --config.data.name=npz):
  python -m experiments.imp --config=configs/filter_vgg16_cifar10.py:quick ...
Export the pruned network (a plain, smaller VGG-16; `lottery.export`):
  python -c "import lottery; lottery.export_ticket('/tmp/filter', \\
      '/tmp/filter_vgg16', 1)"

Expected (paper, Table 1; trained in Torch7 on a GPU, ≈ from memory where not
in the text): dense 93.25%, VGG-16-A 93.40% after fine-tuning. Liu et al.
2019 (PyTorch, GPU; ≈ recalled, mean of 5 runs): VGG-16-A fine-tuned ≈93.41,
scratch-E ≈93.62, scratch-B ≈93.78 (dense ≈93.63): trained from scratch, the
pruned architecture does as well. Not measured here: a 63K-step round takes
about a day on a 2-core CPU.
"""

from configs import resnet20_cifar10

ARGS = ("", "quick")


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  # The CIFAR training of the ResNet-20 recipe (':quick': width 4, 20 steps).
  c = resnet20_cifar10.get_config(arg)
  c.model.name = "vgg16"
  # Half the filters of conv 1 and convs 8-13; convs 2-7 keep theirs.
  c.pruning.update(fraction=0.5, layer_fractions="conv[2-7]/kernel=0",
                   rounds=1, scope="layerwise", prunable=(".*kernel",),
                   reset="finetune", rewind_step=0, structure="neuron",
                   group_score="l1")
  c.controls = ("scratch",)
  return c
