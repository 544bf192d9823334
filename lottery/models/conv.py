"""Plain convolutional networks: Conv-2/4/6 of Frankle & Carbin 2019
(VGG-style, for CIFAR-10) and the CNN of MNIST-1D (Greydanus & Kobak 2024)."""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math

import flax.linen as nn

from lottery.models import check_int
from lottery.models import check_poolable
from lottery.models import register
from lottery.models.convolution import conv_module
from lottery.models.mlp import torch_uniform
from lottery.structure import Units


class ConvNet(nn.Module):
  """Conv + ReLU layers, optional max-pools, then dense ReLU layers.

  `convs` lists conv widths; 'pool' entries mark 2x2 max-pooling. Works on
  images (N, H, W, C) and on sequences (N, L) or (N, L, C), where the convs
  are 1-D. By default every conv is 3x3, stride 1, 'SAME', with Glorot-normal
  kernels and zero biases (Conv-2/4/6); `kernels` (one size per conv),
  `stride`, `padding` (flax's: 'SAME', 'VALID' or an int per side) and
  `torch_init` (PyTorch's default init of every layer, kernels and biases)
  give other plain CNNs. `narrow`: the convolutions'
  (`lottery.models.convolution.conv_module`; `lottery.shrink` sets it).
  """
  convs: Sequence[int | str]
  dense: Sequence[int]
  num_classes: int
  narrow: int = 0
  kernels: Sequence[int] = ()
  stride: int = 1
  padding: str | int = "SAME"
  torch_init: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No state.
    if x.ndim == 2:  # (N, L) sequences such as MNIST-1D get a channel axis.
      x = x[..., None]
    spatial = x.ndim - 2
    if self.kernels and len(self.kernels) != self._num_convs():
      raise ValueError(f"ConvNet: {len(self.kernels)} kernel sizes for "
                       f"{self._num_convs()} convs")
    check_poolable(x, "ConvNet", list(self.convs).count("pool"))
    kernels = iter(self.kernels or (3,) * self._num_convs())
    i = 0
    for c in self.convs:
      if c == "pool":
        x = nn.max_pool(x, (2,) * spatial, strides=(2,) * spatial)
      else:
        i += 1
        size = (next(kernels),) * spatial
        x = nn.relu(conv_module(self.narrow)(
            c, size, strides=self.stride, padding=self.padding,
            name=f"conv{i}",
            **self._inits(math.prod(size) * x.shape[-1]))(x))
    x = x.reshape((x.shape[0], -1))
    for j, f in enumerate(self.dense):
      x = nn.relu(nn.Dense(f, name=f"fc{j + 1}",
                           **self._inits(x.shape[-1]))(x))
    return nn.Dense(self.num_classes, name="out",
                    **self._inits(x.shape[-1]))(x)

  def _inits(self, fan_in: int) -> dict:
    if self.torch_init:
      init = functools.partial(torch_uniform(), fan_in=fan_in)
      return dict(kernel_init=init, bias_init=init)
    return dict(kernel_init=nn.initializers.glorot_normal())

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


@register("mnist1d_cnn")
def mnist1d_cnn(num_classes: int, width: int = 25) -> nn.Module:
  """The CNN of MNIST-1D (Greydanus & Kobak 2024; `ConvBase` in the models.py
  of github.com/greydanus/mnist1d): three 1-D convs of `width` (25) channels
  (kernels 5, 3, 3, stride 2, padding 1: length 40 -> 19 -> 10 -> 5), ReLU,
  a linear layer on the flattened 5 x width map; PyTorch's default init.
  5,210 parameters on 10 classes at width 25. Their baseline (Adam 1e-2,
  batch 100, 8000 steps): 94% test accuracy."""
  check_int("width", width, 1)
  return ConvNet(convs=(width,) * 3, dense=(), num_classes=num_classes,
                 kernels=(5, 3, 3), stride=2, padding=1, torch_init=True)


@register("conv4")
def conv4(num_classes: int) -> nn.Module:
  return ConvNet(convs=(64, 64, "pool", 128, 128, "pool"), dense=(256, 256),
                 num_classes=num_classes)


@register("conv6")
def conv6(num_classes: int) -> nn.Module:
  return ConvNet(convs=(64, 64, "pool", 128, 128, "pool", 256, 256, "pool"),
                 dense=(256, 256), num_classes=num_classes)
