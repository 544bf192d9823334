"""Fully connected models: LeNet-300-100 and the MNIST-1D lottery MLP."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery.models import register
from lottery.structure import Units


class MLP(nn.Module):
  """Dense ReLU layers 'fc1'..'fcN' then a linear 'out' layer.

  Inputs of any shape (N, ...) are flattened. Kernels are Glorot-normal and
  biases zero, as in Frankle & Carbin 2019.
  """
  features: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No state.
    x = x.reshape((x.shape[0], -1))
    init = nn.initializers.glorot_normal()
    for i, f in enumerate(self.features):
      x = nn.relu(nn.Dense(f, kernel_init=init, name=f"fc{i + 1}")(x))
    return nn.Dense(self.num_classes, kernel_init=init, name="out")(x)

  def coupling(self) -> tuple[Units, ...]:
    """The units of each hidden layer, read by the next layer ('out' last);
    the output units (classes) are not prunable units."""
    names = [f"fc{i + 1}" for i in range(len(self.features))] + ["out"]
    return tuple(Units((a,), (b,)) for a, b in zip(names, names[1:]))

  def input_layer(self) -> str:
    """The first layer, affine, reading the flattened input
    (`lottery.stability.linear_input`)."""
    return "fc1"

  def with_widths(self, widths: Sequence[int]) -> MLP:
    """The same MLP with `widths[i]` units in hidden layer i."""
    return self.clone(features=tuple(int(w) for w in widths))


def torch_uniform(fan_in_axis: int = -2):
  """PyTorch's default nn.Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in_axis: axis of the shape that holds the fan-in; an explicit
      `fan_in=` keyword at call time overrides it (for biases).

  Returns:
    An initializer `(key, shape, dtype=float32, fan_in=None) -> array`.
  """
  def init(key, shape, dtype=jnp.float32, fan_in=None):
    fan_in = shape[fan_in_axis] if fan_in is None else fan_in
    # As a float32 (exactly the int32 -> float32 conversion jnp.sqrt(int)
    # makes), so that a fan-in past int32's range is no overflow.
    bound = 1.0 / jnp.sqrt(jnp.float32(fan_in))
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class TorchDense(nn.Module):
  """Dense layer with PyTorch's default init for kernel and bias."""
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_uniform(), (fan_in, self.features))
    bias = self.param(
        "bias", lambda k, s: torch_uniform()(k, s, fan_in=fan_in),
        (self.features,))
    return x @ kernel + bias


class ResidualMLP(nn.Module):
  """The MLP of the MNIST-1D paper's lottery-ticket experiment.

  40 -> 500 ('fc1'), a residual 500 -> 500 block ('fc2'), -> classes ('out');
  ReLU, PyTorch default init (the authors' notebook is PyTorch).
  """
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No state.
    x = x.reshape((x.shape[0], -1))
    h = nn.relu(TorchDense(self.hidden, name="fc1")(x))
    h = h + nn.relu(TorchDense(self.hidden, name="fc2")(h))
    return TorchDense(self.num_classes, name="out")(h)

  def coupling(self) -> tuple[Units, ...]:
    """One set of units: the residual stream. Unit j is fc1's output j and
    fc2's output j (added into the same h_j) and is read by fc2's and
    out's input row j, so these four go together: a residual stream
    (`Units.stream`)."""
    return (Units(("fc1", "fc2"), ("fc2", "out"), stream=True),)

  def input_layer(self) -> str:
    """The first layer, affine, reading the flattened input
    (`lottery.stability.linear_input`)."""
    return "fc1"

  def with_widths(self, widths: Sequence[int]) -> ResidualMLP:
    """The same network with `widths[0]` units in the residual stream."""
    (hidden,) = widths
    return self.clone(hidden=int(hidden))


@register("lenet_300_100")
def lenet_300_100(num_classes: int) -> nn.Module:
  return MLP(features=(300, 100), num_classes=num_classes)


@register("mnist1d_mlp")
def mnist1d_mlp(num_classes: int) -> nn.Module:
  return ResidualMLP(hidden=500, num_classes=num_classes)


@register("mlp_tiny")
def mlp_tiny(num_classes: int) -> nn.Module:
  """A 32-unit MLP for tests and smoke runs."""
  return MLP(features=(32,), num_classes=num_classes)
