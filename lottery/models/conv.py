"""Conv-2/4/6 of Frankle & Carbin 2019 (VGG-style, for CIFAR-10)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from lottery.models import register
from lottery.models.convolution import conv_module
from lottery.structure import Units


class ConvNet(nn.Module):
  """3x3 'same' conv + ReLU blocks, 2x2 max-pool after each pair, then dense.

  `convs` lists conv widths; 'pool' entries mark max-pooling. Works on images
  (N, H, W, C) and on sequences (N, L) or (N, L, C), where the convs are 1-D.
  Glorot-normal kernels, zero biases. `narrow`: the convolutions'
  (`lottery.models.convolution.conv_module`; `lottery.shrink` sets it).
  """
  convs: Sequence[int | str]
  dense: Sequence[int]
  num_classes: int
  narrow: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No state.
    if x.ndim == 2:  # (N, L) sequences such as MNIST-1D get a channel axis.
      x = x[..., None]
    spatial = x.ndim - 2
    init = nn.initializers.glorot_normal()
    i = 0
    for c in self.convs:
      if c == "pool":
        x = nn.max_pool(x, (2,) * spatial, strides=(2,) * spatial)
      else:
        i += 1
        x = nn.relu(conv_module(self.narrow)(
            c, (3,) * spatial, padding="SAME", kernel_init=init,
            name=f"conv{i}")(x))
    x = x.reshape((x.shape[0], -1))
    for j, f in enumerate(self.dense):
      x = nn.relu(nn.Dense(f, kernel_init=init, name=f"fc{j + 1}")(x))
    return nn.Dense(self.num_classes, kernel_init=init, name="out")(x)

  def input_layer(self) -> str:
    """The first conv, reading the input
    (`lottery.stability.linear_input`)."""
    return "conv1"

  def coupling(self) -> tuple[Units, ...]:
    """The output channels of each conv, read by the next conv's input
    channels (kernel axis -2); the last conv's channels, read through the
    flatten of (..., C) by the first dense layer's tiled rows (channel c at
    rows c, c + C, c + 2C, ...); then the units of each dense layer, read by
    the next ('out' last). 'neuron' prunes every conv channel and dense
    unit; the output units (classes) are not prunable units."""
    convs = [f"conv{i + 1}" for i in range(self._num_convs())]
    dense = [f"fc{j + 1}" for j in range(len(self.dense))]
    layers = convs + dense + ["out"]
    return tuple(Units((a,), (b,), tiled=(b,) if a == convs[-1] else ())
                 for a, b in zip(layers, layers[1:]))

  def with_widths(self, widths: Sequence[int]) -> ConvNet:
    """The same network with `widths` channels and units (the coupling's
    order: the convs, then the dense layers)."""
    it = iter(int(w) for w in widths)
    convs = tuple(c if c == "pool" else next(it) for c in self.convs)
    return self.clone(convs=convs, dense=tuple(it))

  def _num_convs(self) -> int:
    return sum(c != "pool" for c in self.convs)


@register("conv2")
def conv2(num_classes: int) -> nn.Module:
  return ConvNet(convs=(64, 64, "pool"), dense=(256, 256),
                 num_classes=num_classes)


@register("conv4")
def conv4(num_classes: int) -> nn.Module:
  return ConvNet(convs=(64, 64, "pool", 128, 128, "pool"), dense=(256, 256),
                 num_classes=num_classes)


@register("conv6")
def conv6(num_classes: int) -> nn.Module:
  return ConvNet(convs=(64, 64, "pool", 128, 128, "pool", 256, 256, "pool"),
                 dense=(256, 256), num_classes=num_classes)
