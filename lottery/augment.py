"""On-device batch augmentations, registered by name (config `data.augment`).

An augmentation is a jittable `fn(key, x) -> x` over a float batch x of images
(N, H, W, C): the same key gives the same output, every example draws its own
transformation from the key, and the shape is unchanged. They run inside the
compiled train step, so the data never leaves the device; vmap one over a
leading replicate axis of keys and batches.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lottery.errors import LotteryError
from lottery.registry import Registry

Augment = Callable[[jax.Array, jax.Array], jax.Array]

_AUGMENTS = Registry("augmentation", "data.augment")
register = _AUGMENTS.register
unregister = _AUGMENTS.unregister
names = _AUGMENTS.names


def get(name: str, *, field: str = "data.augment") -> Augment:
  """The augmentation registered as `name` ('none', 'crop_flip', ...): a
  jittable `fn(key, x) -> x` for float batches x of shape (N, H, W, C).

  Raises:
    LotteryError: if `name` is not registered.
  """
  return _AUGMENTS.get(name, field=field)


@register("none")
def none(key: jax.Array, x: jax.Array) -> jax.Array:
  """The identity."""
  del key
  return x


def _check_images(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise LotteryError(f"data.augment: {name!r} needs image batches "
                       f"(N, H, W, C) (got shape {tuple(x.shape)})")


def random_crop(key: jax.Array, x: jax.Array, pad: int) -> jax.Array:
  """Zero-pads H and W by `pad` and crops each example back at a random offset.

  Args:
    key: a `jax.random` key.
    x: images (N, H, W, C).
    pad: pixels of zeros added on every side; offsets are uniform in
      [0, 2 * pad] per axis and example (pad = offset: the original image).

  Returns:
    Images (N, H, W, C): each example shifted by (pad - dy, pad - dx) pixels,
    zeros where the padding shows.
  """
  n, h, w, c = x.shape
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Mirrors each image of (N, H, W, C) left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
  return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


@register("crop_flip")
def crop_flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """The standard CIFAR augmentation: 4-pixel padded random crop, random flip.

  Args:
    key: a `jax.random` key; split once, for the crops and for the flips.
    x: float images (N, H, W, C).

  Returns:
    Augmented images (N, H, W, C).
  """
  _check_images(x, "crop_flip")
  crop_key, flip_key = jax.random.split(key)
  return random_flip(flip_key, random_crop(crop_key, x, pad=4))
