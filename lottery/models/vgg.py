"""CIFAR VGG-11/13/16/19 with BatchNorm, as in OpenLTH's cifar_vgg.

3x3 'same' convs (with bias) + BatchNorm + ReLU, 2x2 max-pooling at each 'M'
of the plan, then average pooling of the remaining map and one dense output
layer (OpenLTH pools the 2x2 map of a 32x32 input with AvgPool2d(2); a global
mean is the same there and also takes other input sizes). Init as OpenLTH's
default: He-normal kernels (untruncated), PyTorch's default biases, BatchNorm
bias 0 and scale 1 or, with `bn_init='uniform'`, U[0, 1) (see resnet.py).

`width` scales every layer: the plan's widths times width / 64 (64 = VGG's
own). Parameter paths: 'conv{i}/{kernel,bias}', 'bn{i}/{scale,bias}',
'out/{kernel,bias}'. OpenLTH's VGG recipe leaves the output layer unpruned:
use pruning.prunable=('conv.*kernel',) for that.

Checked against OpenLTH's cifar_vgg_16 (and Synaptic-Flow's lottery_vgg16_bn,
its copy): the same plan, conv (with bias) + BatchNorm + ReLU, max-pooling at
each 'M', AvgPool2d(2) on the final 2x2 map then Linear(512, classes), He-normal
kernels. Differences, kept: OpenLTH leaves conv/linear biases at PyTorch's
default init (as here) while Synaptic-Flow zeroes them; BatchNorm scale 1
(the default `bn_init`) is OpenLTH's 'fixed' BatchNorm init and Synaptic-
Flow's, `bn_init='uniform'` OpenLTH's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from lottery.errors import LotteryError
from lottery.models import check_int
from lottery.models import check_poolable
from lottery.models import register
from lottery.models.convolution import conv_module
from lottery.models.resnet import batch_norm
from lottery.models.resnet import check_bn_init
from lottery.models.resnet import check_images
from lottery.models.resnet import he_normal
from lottery.models.resnet import torch_bias
from lottery.structure import Units

PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
         512, "M", 512, 512, 512, 512),
}


class VGG(nn.Module):
  """Conv + BatchNorm + ReLU layers per `plan` ('M' = max-pool), then dense.
  `narrow`: the convolutions' (`lottery.models.convolution.conv_module`;
  `lottery.shrink` sets it). `bn_init`: the BatchNorm scales' init, 'ones'
  or 'uniform' (`lottery.models.resnet.batch_norm`)."""
  plan: Sequence[int | str]
  num_classes: int
  narrow: int = 0
  bn_init: str = "ones"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_images(x, "vgg")
    check_poolable(x, "vgg", list(self.plan).count("M"))
    i = 0
    for c in self.plan:
      if c == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        i += 1
        fan_in = 9 * x.shape[-1]
        x = conv_module(self.narrow)(c, (3, 3), padding=1,
                                     kernel_init=he_normal,
                                     bias_init=torch_bias(fan_in),
                                     name=f"conv{i}")(x)
        x = nn.relu(batch_norm(train, f"bn{i}", self.bn_init)(x))
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal,
                    bias_init=torch_bias(x.shape[-1]), name="out")(x)

  def input_layer(self) -> str:
    """The first conv, reading the images
    (`lottery.stability.linear_input`)."""
    return "conv1"

  def coupling(self) -> tuple[Units, ...]:
    """The output channels of each conv, read by the next conv's input
    channels (HWIO axis -2) and, for the last conv, by the rows of 'out' (the
    global mean pools channel j into input row j).

    The conv's BatchNorm goes with its channels (pruned where prunable,
    sliced by shrink). Not prunable (the default), a pruned channel's
    BatchNorm still emits the constant relu(bias - mean * scale /
    sqrt(var + eps)), which max-pooling keeps constant; every reader of it
    is masked, so it adds nothing.
    """
    n = sum(c != "M" for c in self.plan)
    convs = [f"conv{i + 1}" for i in range(n)]
    return tuple(Units((a,), (b,), (f"bn{i + 1}",))
                 for i, (a, b) in enumerate(zip(convs, convs[1:] + ["out"])))

  def with_widths(self, widths: Sequence[int]) -> VGG:
    """The same VGG with `widths[i]` channels in conv i + 1."""
    it = iter(int(w) for w in widths)
    return self.clone(plan=tuple(c if c == "M" else next(it)
                                 for c in self.plan))


@register("vgg")
def vgg(num_classes: int, depth: int = 16, width: int = 64,
        bn_init: str = "ones") -> nn.Module:
  """VGG-`depth` (11, 13, 16 or 19) whose first layer has `width` channels,
  BatchNorm scales initialized by `bn_init` ('ones' or 'uniform')."""
  if depth not in PLANS:
    raise LotteryError(f"model.depth: VGG depth must be one of "
                       f"{sorted(PLANS)} (got {depth!r})")
  check_int("width", width, 1)
  check_bn_init(bn_init, ("ones", "uniform"))  # No residual blocks.
  plan = tuple(c if c == "M" else max(1, c * width // 64)
               for c in PLANS[depth])
  return VGG(plan=plan, num_classes=num_classes, bn_init=bn_init)


@register("vgg11")
def vgg11(num_classes: int, width: int = 64,
          bn_init: str = "ones") -> nn.Module:
  return vgg(num_classes, depth=11, width=width, bn_init=bn_init)


@register("vgg13")
def vgg13(num_classes: int, width: int = 64,
          bn_init: str = "ones") -> nn.Module:
  return vgg(num_classes, depth=13, width=width, bn_init=bn_init)


@register("vgg16")
def vgg16(num_classes: int, width: int = 64,
          bn_init: str = "ones") -> nn.Module:
  """VGG-16-BN: 14,728,266 parameters on 10 classes (BatchNorm included)."""
  return vgg(num_classes, depth=16, width=width, bn_init=bn_init)


@register("vgg19")
def vgg19(num_classes: int, width: int = 64,
          bn_init: str = "ones") -> nn.Module:
  return vgg(num_classes, depth=19, width=width, bn_init=bn_init)
