"""CIFAR ResNets (He et al. 2016, Section 4.2) as in OpenLTH's cifar_resnet.

3x3 conv stem with `width` channels + BatchNorm + ReLU; three stages of
(depth - 2) / 6 basic blocks with widths w, 2w, 4w, stride 2 at the first block
of stages 2 and 3; a 1x1 conv + BatchNorm projection shortcut where the shape
changes; global average pooling; dense output layer. Convs have no bias.

Init as OpenLTH's default 'kaiming_normal': He-normal (untruncated,
std = sqrt(2 / fan_in)) for every conv and dense kernel, PyTorch's default
U(+-1/sqrt(fan_in)) for the output bias. BatchNorm bias 0 and, by `bn_init`,
scale 1 ('ones', the default: OpenLTH's 'fixed' BatchNorm init, Synaptic-
Flow's), U[0, 1) ('uniform': OpenLTH's default, its LMC and IMP runs) or 1
with each residual block's last BatchNorm at 0 ('zero_last': torchvision's
zero_init_residual, RigL's ResNet-50); PyTorch's BatchNorm constants
(momentum 0.1, i.e. Flax's 0.9; epsilon 1e-5).

Parameter paths: 'conv/kernel', 'bn/{scale,bias}', 'stage{s}_block{b}/conv1/
kernel' ... 'stage{s}_block{b}/shortcut_conv/kernel', 'out/{kernel,bias}'; the
default prunable pattern '.*kernel' selects exactly the convs and the output
layer (22 kernels in ResNet-20), never BatchNorm.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from lottery.errors import LotteryError
from lottery.models import check_int
from lottery.models import register
from lottery.models.convolution import conv_module
from lottery.structure import Units
from lottery.models.mlp import torch_uniform

# PyTorch's kaiming_normal_ (mode 'fan_in', gain sqrt(2)) is untruncated.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_bias(fan_in: int):
  """PyTorch's default bias init of a layer with `fan_in` inputs."""
  return functools.partial(torch_uniform(), fan_in=fan_in)


# The BatchNorm scale inits of `bn_init` (the module doc).
BN_INITS = ("ones", "uniform", "zero_last")


def batch_norm(train: bool, name: str, bn_init: str = "ones", *,
               last: bool = False) -> nn.BatchNorm:
  """BatchNorm with PyTorch's constants; batch statistics when training;
  its scale initialized by `bn_init` (`last`: a residual block's last)."""
  scale_init = {"uniform": nn.initializers.uniform(1.0),
                "zero_last": (nn.initializers.zeros if last else
                              nn.initializers.ones)}.get(
                                  bn_init, nn.initializers.ones)
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, scale_init=scale_init, name=name)


def check_bn_init(bn_init: str, known: tuple[str, ...] = BN_INITS) -> None:
  """Raises LotteryError naming model.bn_init unless `bn_init` is known."""
  if bn_init not in known:
    raise LotteryError(f"model.bn_init: must be one of {list(known)} (got "
                       f"{bn_init!r})")


class BasicBlock(nn.Module):
  """Two 3x3 conv + BatchNorm layers around a residual connection; conv1
  has `inner` output channels (default `features`). `project`: whether the
  shortcut is a 1x1 conv + BatchNorm (None: where the shape changes; a
  shrunk ResNet names it, since its widths no longer tell)."""
  features: int
  strides: int = 1
  inner: int | None = None
  project: bool | None = None
  narrow: int = 0  # `lottery.models.convolution.conv_module`'s.
  bn_init: str = "ones"  # `batch_norm`'s.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(conv_module(self.narrow), use_bias=False,
                             kernel_init=he_normal)
    bn = functools.partial(batch_norm, train, bn_init=self.bn_init)
    # padding=1 as in PyTorch: Flax's 'SAME' would pad stride-2 convs on the
    # bottom/right only and sample other pixels.
    y = conv(self.inner or self.features, (3, 3), strides=self.strides,
             padding=1, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
    y = bn("bn2", last=True)(y)
    project = self.project
    if project is None:
      project = self.strides != 1 or x.shape[-1] != self.features
    if project:
      x = conv(self.features, (1, 1), strides=self.strides, padding="VALID",
               name="shortcut_conv")(x)
      x = bn("shortcut_bn")(x)
    return nn.relu(y + x)


def check_images(x: jax.Array, model: str) -> None:
  """Raises LotteryError unless `x` is an image batch (N, H, W, C)."""
  if x.ndim != 4:
    raise LotteryError(f"model.name: {model!r} needs image batches "
                       f"(N, H, W, C) (got shape {tuple(x.shape)})")


def stream_units(layout: Sequence[tuple[str, bool]], last: str
                 ) -> tuple[Units, ...]:
  """The residual streams of a ResNet whose blocks `layout` ((name, whether
  its shortcut is a conv), in order) follow the stem 'conv' + 'bn' and end
  in conv `last` + BatchNorm 'bn' + `last`[-1]: one unit set per stream,
  a stream running from a projection (or the stem) to the next.

  A stream's producers are the convs whose BatchNorm outputs it adds (the
  stem or a projection shortcut, and every block's `last`), its channels
  those BatchNorms, its consumers every conv that reads it (each block's
  conv1, the next projection) and, for the last stream, 'out' (after the
  pooling). Everything between them is per channel (ReLU, the identity
  shortcuts, max and average pooling), so a channel that no consumer reads
  changes nothing and goes with its producers' columns. Each set is marked
  a stream (`Units.stream`).
  """
  out = []
  producers, channels, consumers = ["conv"], ["bn"], []
  for name, project in layout:
    consumers.append(f"{name}/conv1")
    if project:
      consumers.append(f"{name}/shortcut_conv")
      out.append(Units(tuple(producers), tuple(consumers), tuple(channels),
                       stream=True))
      producers, channels, consumers = ([f"{name}/shortcut_conv"],
                                        [f"{name}/shortcut_bn"], [])
    producers.append(f"{name}/{last}")
    channels.append(f"{name}/bn{last[-1]}")
  consumers.append("out")
  out.append(Units(tuple(producers), tuple(consumers), tuple(channels),
                   stream=True))
  return tuple(out)


def split_widths(widths: Sequence[int], inner: int, streams: int, model: str
                 ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
  """(inner widths, stream widths or None) of a ResNet's `with_widths`:
  `inner` + `streams` widths in the coupling's order, or the `inner` ones
  alone (the streams at full width)."""
  widths = tuple(int(w) for w in widths)
  if len(widths) not in (inner, inner + streams):
    raise LotteryError(f"model: {model} takes {inner} inner widths and "
                       f"{streams} stream widths (got {len(widths)} widths)")
  return widths[:inner], widths[inner:] or None


class ResNet(nn.Module):
  """A CIFAR ResNet of `depth` = 6n + 2 layers; images (N, H, W, C).
  `inner`: each block's inner channels, in block order (default: the
  stage's width); `streams`: each stage's channels (default: width, 2
  width, 4 width); both set by `with_widths`. `narrow`: the convolutions'
  (`lottery.models.convolution.conv_module`; `lottery.shrink` sets it).
  `bn_init`: the BatchNorm scales' init (`BN_INITS`, the module doc)."""
  depth: int
  width: int
  num_classes: int
  inner: tuple[int, ...] | None = None
  streams: tuple[int, ...] | None = None
  narrow: int = 0
  bn_init: str = "ones"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_images(x, "resnet")
    streams = self.streams or tuple(self.width * 2**s for s in range(3))
    x = conv_module(self.narrow)(streams[0], (3, 3), padding=1,
                                 use_bias=False, kernel_init=he_normal,
                                 name="conv")(x)
    x = nn.relu(batch_norm(train, "bn", self.bn_init)(x))
    blocks = (self.depth - 2) // 6
    inner = iter(self.inner or [None] * (3 * blocks))
    for s in range(3):
      for b in range(blocks):
        x = BasicBlock(streams[s], strides=2 if s and not b else 1,
                       inner=next(inner), project=bool(s and not b),
                       narrow=self.narrow, bn_init=self.bn_init,
                       name=f"stage{s + 1}_block{b + 1}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal,
                    bias_init=torch_bias(x.shape[-1]), name="out")(x)

  def input_layer(self) -> str:
    """The stem conv, reading the images
    (`lottery.stability.linear_input`)."""
    return "conv"

  def coupling(self) -> tuple[Units, ...]:
    """The inner channels of each block: conv1's outputs (with bn1), read by
    conv2's input channels (Li et al. 2017's filter pruning); then each
    stage's residual stream (`stream_units`): the stem conv (stage 1) or
    the projection shortcut (stages 2, 3) and every block's conv2, with
    their BatchNorms, read by the blocks' conv1, the next projection and
    'out'.

    A pruned channel's BatchNorm (not prunable by default) emits a constant
    that the consumers' masked input slices do not read.
    """
    blocks = (self.depth - 2) // 6
    names = [f"stage{s + 1}_block{b + 1}" for s in range(3)
             for b in range(blocks)]
    inner = tuple(Units((f"{n}/conv1",), (f"{n}/conv2",), (f"{n}/bn1",))
                  for n in names)
    return inner + stream_units(
        [(n, n.endswith("_block1") and not n.startswith("stage1"))
         for n in names], "conv2")

  def with_widths(self, widths: Sequence[int]) -> ResNet:
    """The same ResNet with `widths[i]` inner channels in block i and then
    each stage's stream channels (the coupling's order; the inner widths
    alone leave the streams as they are)."""
    inner, streams = split_widths(widths, 3 * ((self.depth - 2) // 6), 3,
                                  "resnet")
    return self.clone(inner=inner, streams=streams or self.streams)


@register("resnet")
def resnet(num_classes: int, depth: int = 20, width: int = 16,
           bn_init: str = "ones") -> nn.Module:
  """ResNet-`depth` (6n + 2: 20, 32, 44, 56, 110, ...), stem width `width`,
  BatchNorm scales initialized by `bn_init` ('ones', 'uniform',
  'zero_last')."""
  check_int("depth", depth, 8)
  if (depth - 2) % 6:
    raise LotteryError(
        f"model.depth: must be 6n + 2, e.g. 20, 32, 56 or 110 (got {depth})")
  check_int("width", width, 1)
  check_bn_init(bn_init)
  return ResNet(depth=depth, width=width, num_classes=num_classes,
                bn_init=bn_init)


@register("resnet20")
def resnet20(num_classes: int, width: int = 16,
             bn_init: str = "ones") -> nn.Module:
  """ResNet-20: 272,474 parameters on 10 classes (BatchNorm included)."""
  return resnet(num_classes, depth=20, width=width, bn_init=bn_init)


@register("resnet32")
def resnet32(num_classes: int, width: int = 16,
             bn_init: str = "ones") -> nn.Module:
  return resnet(num_classes, depth=32, width=width, bn_init=bn_init)


@register("resnet56")
def resnet56(num_classes: int, width: int = 16,
             bn_init: str = "ones") -> nn.Module:
  return resnet(num_classes, depth=56, width=width, bn_init=bn_init)


class Bottleneck(nn.Module):
  """1x1, 3x3 (stride here, as in torchvision's ResNet v1.5), 1x1 convs with
  BatchNorm, 4x expansion, around a residual connection."""
  features: int
  strides: int = 1
  inner: tuple[int, int] | None = None  # conv1's, conv2's outputs
  out: int | None = None  # conv3's outputs (default 4 * features)
  project: bool | None = None  # as BasicBlock's
  narrow: int = 0  # `lottery.models.convolution.conv_module`'s.
  bn_init: str = "ones"  # `batch_norm`'s.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(conv_module(self.narrow), use_bias=False,
                             kernel_init=he_normal)
    bn = functools.partial(batch_norm, train, bn_init=self.bn_init)
    w1, w2 = self.inner or (self.features, self.features)
    y = conv(w1, (1, 1), name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = conv(w2, (3, 3), strides=self.strides, padding=1,
             name="conv2")(y)
    y = nn.relu(bn("bn2")(y))
    out = self.out or self.features * 4
    y = conv(out, (1, 1), name="conv3")(y)
    y = bn("bn3", last=True)(y)
    project = self.project
    if project is None:
      project = self.strides != 1 or x.shape[-1] != out
    if project:
      x = conv(out, (1, 1), strides=self.strides,
               padding="VALID", name="shortcut_conv")(x)
      x = bn("shortcut_bn")(x)
    return nn.relu(y + x)


class ImageNetResNet(nn.Module):
  """ResNet with bottleneck blocks in the ImageNet layout (He et al. 2016,
  Table 1): 7x7/2 conv stem + BatchNorm + ReLU, 3x3/2 max pool, four stages
  of widths w, 2w, 4w, 8w (x4 out), stride 2 at the first block of stages
  2-4, global average pooling, dense output layer. `streams`: the stem's
  and each stage's channels (default w, 4w, 8w, 16w, 32w). `narrow`,
  `bn_init`: as ResNet's."""
  blocks: tuple[int, ...]
  width: int
  num_classes: int
  inner: tuple[int, ...] | None = None  # conv1, conv2 of each block
  streams: tuple[int, ...] | None = None
  narrow: int = 0
  bn_init: str = "ones"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_images(x, "resnet50")
    streams = self.streams or (self.width,) + tuple(
        4 * self.width * 2**s for s in range(len(self.blocks)))
    x = conv_module(self.narrow)(streams[0], (7, 7), strides=2, padding=3,
                                 use_bias=False, kernel_init=he_normal,
                                 name="conv")(x)
    x = nn.relu(batch_norm(train, "bn", self.bn_init)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    inner = iter(self.inner or [None] * (2 * sum(self.blocks)))
    for s, n in enumerate(self.blocks):
      for b in range(n):
        pair = (next(inner), next(inner))
        x = Bottleneck(self.width * 2**s, strides=2 if s and not b else 1,
                       inner=None if pair[0] is None else pair,
                       out=streams[s + 1], project=not b,
                       narrow=self.narrow, bn_init=self.bn_init,
                       name=f"stage{s + 1}_block{b + 1}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal,
                    bias_init=torch_bias(x.shape[-1]), name="out")(x)

  def input_layer(self) -> str:
    """The stem conv, reading the images
    (`lottery.stability.linear_input`)."""
    return "conv"

  def coupling(self) -> tuple[Units, ...]:
    """Each bottleneck's inner channels: conv1's outputs (with bn1) read by
    conv2, conv2's (with bn2) read by conv3; then the streams
    (`stream_units`): the stem's (conv + bn, through the max pool, read by
    the first block's conv1 and projection), and each stage's (its
    projection shortcut and every block's conv3, with their BatchNorms)."""
    out, names = [], []
    for s, n in enumerate(self.blocks):
      for b in range(n):
        name = f"stage{s + 1}_block{b + 1}"
        names.append(name)
        out += [Units((f"{name}/conv1",), (f"{name}/conv2",),
                      (f"{name}/bn1",)),
                Units((f"{name}/conv2",), (f"{name}/conv3",),
                      (f"{name}/bn2",))]
    return tuple(out) + stream_units(
        [(n, n.endswith("_block1")) for n in names], "conv3")

  def with_widths(self, widths: Sequence[int]) -> ImageNetResNet:
    """The same network with inner widths and then the stem's and each
    stage's stream widths (the coupling's order; the inner widths alone
    leave the streams as they are)."""
    inner, streams = split_widths(widths, 2 * sum(self.blocks),
                                  len(self.blocks) + 1, "resnet50")
    return self.clone(inner=inner, streams=streams or self.streams)


@register("resnet50")
def resnet50(num_classes: int, width: int = 64,
             bn_init: str = "ones") -> nn.Module:
  """ResNet-50 (ImageNet layout, bottlenecks 3-4-6-3): 25,557,032
  parameters on 1000 classes (BatchNorm scales and biases included, its
  running statistics not), torchvision's count; its first conv is
  'conv/kernel' (the RigL recipe keeps it dense). `bn_init`: as
  `resnet`'s."""
  check_int("width", width, 1)
  check_bn_init(bn_init)
  return ImageNetResNet(blocks=(3, 4, 6, 3), width=width,
                        num_classes=num_classes, bn_init=bn_init)
