"""A small Vision Transformer (Dosovitskiy et al. 2021) for CPU-sized runs.

Non-overlapping patches, each a token: the patching follows the input's rank
(sequences (N, L) such as MNIST-1D's (N, 40): 1-D patches of `patch` samples;
(N, L, C): 1-D patches of `patch` steps; images (N, H, W, C): `patch` x
`patch` patches), projected to `dim`, plus a learned position embedding.
Then `depth` pre-LayerNorm blocks, each x + attn(ln1(x)) and x + mlp(ln2(x)):
multi-head self-attention (`heads` heads of dim / heads each) and an MLP
`dim` -> `mlp_dim` (GELU) -> `dim`; a final LayerNorm, mean pooling over the
tokens (no class token) and a linear 'out' layer.

Parameter paths: 'embed/{patches,bias,position}', 'block{i}/ln{1,2}/{scale,
bias}', 'block{i}/attn/{query,key,value,out}/{kernel,bias}',
'block{i}/mlp/{fc1,fc2}/{kernel,bias}', 'norm/{scale,bias}', 'out/{kernel,
bias}'. The default prunable pattern ('.*kernel') takes the attention and
MLP kernels and 'out/kernel'; the embeddings ('embed/patches' is not named
'kernel') and the LayerNorms are not prunable.

Units (`coupling`): structure 'head' prunes whole attention heads (head h:
columns [h*dh, (h+1)*dh) of query, key and value, the same rows of
attn/out); 'neuron' prunes the MLPs' hidden units (fc1's columns with fc2's
rows). The residual stream (dim) is not a unit set. `lottery.shrink`
rebuilds the network with fewer heads per block (each still dh wide) and
fewer MLP units.

Init: Glorot-uniform dense kernels and zero biases (the ViT paper's
reference code), LeCun-normal patch projection, position embedding
N(0, 0.02^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lottery.errors import LotteryError
from lottery.models import check_int
from lottery.models import register
from lottery.structure import HEAD
from lottery.structure import Units

_KERNEL = nn.initializers.xavier_uniform()


class Embed(nn.Module):
  """Patches (N, T, P) -> tokens (N, T, dim) plus a learned position
  embedding."""
  dim: int

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    _, tokens, size = patches.shape
    w = self.param("patches", nn.initializers.lecun_normal(), (size, self.dim))
    b = self.param("bias", nn.initializers.zeros, (self.dim,))
    pos = self.param("position", nn.initializers.normal(0.02),
                     (tokens, self.dim))
    return patches @ w + b + pos


class Attention(nn.Module):
  """Multi-head self-attention: `heads` heads of `head_dim` each; the heads
  are consecutive blocks of head_dim columns of 'query', 'key' and 'value'
  and of rows of 'out'."""
  heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, dim = x.shape
    width = self.heads * self.head_dim
    q, k, v = (nn.Dense(width, kernel_init=_KERNEL, name=name)(x).reshape(
        n, t, self.heads, self.head_dim) for name in ("query", "key", "value"))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(
        jnp.asarray(self.head_dim, x.dtype))
    y = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v)
    return nn.Dense(dim, kernel_init=_KERNEL, name="out")(
        y.reshape(n, t, width))


class Mlp(nn.Module):
  """dim -> hidden ('fc1', GELU) -> dim ('fc2')."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(nn.Dense(self.hidden, kernel_init=_KERNEL, name="fc1")(x))
    return nn.Dense(x.shape[-1], kernel_init=_KERNEL, name="fc2")(h)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""
  heads: int
  head_dim: int
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + Attention(self.heads, self.head_dim, name="attn")(
        nn.LayerNorm(name="ln1")(x))
    return x + Mlp(self.hidden, name="mlp")(nn.LayerNorm(name="ln2")(x))


def patches_of(x: jax.Array, patch: int) -> jax.Array:
  """Non-overlapping patches (N, tokens, values) of sequences (N, L), (N, L,
  C) or images (N, H, W, C), in row-major order.

  Raises:
    LotteryError: 'model.patch: ...' for another rank or a length that
      `patch` does not divide.
  """
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim not in (3, 4):
    raise LotteryError(f"model.patch: the ViT takes sequences (N, L), (N, L, "
                       f"C) or images (N, H, W, C) (got shape {x.shape})")
  spatial = x.shape[1:-1]
  if any(s % patch for s in spatial):
    raise LotteryError(f"model.patch: {patch} does not divide the input's "
                       f"spatial shape {tuple(spatial)}")
  n, c = x.shape[0], x.shape[-1]
  if x.ndim == 3:
    return x.reshape(n, spatial[0] // patch, patch * c)
  h, w = spatial[0] // patch, spatial[1] // patch
  x = x.reshape(n, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * w, patch * patch * c)


class ViT(nn.Module):
  """Patch embedding, `len(heads)` blocks (block i: heads[i] heads of
  head_dim, an MLP of mlp_dims[i] units), final LayerNorm, mean pooling,
  'out'."""
  num_classes: int
  dim: int
  heads: Sequence[int]
  head_dim: int
  mlp_dims: Sequence[int]
  patch: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No state, no dropout.
    x = Embed(self.dim, name="embed")(patches_of(x, self.patch))
    for i, (h, m) in enumerate(zip(self.heads, self.mlp_dims)):
      x = Block(h, self.head_dim, m, name=f"block{i + 1}")(x)
    x = nn.LayerNorm(name="norm")(x).mean(axis=1)
    return nn.Dense(self.num_classes, kernel_init=_KERNEL, name="out")(x)

  def input_layer(self) -> str:
    """The patch embedding, affine in its parameters (projection, bias and
    position embedding; `lottery.stability.linear_input`)."""
    return "embed"

  def coupling(self) -> tuple[Units, ...]:
    """Per block: its heads (kind 'head': head h is the head_dim columns
    from h * head_dim of query, key and value, with the same rows of
    attn/out), then its MLP's hidden units (kind 'neuron': fc1's columns
    with fc2's rows; GELU between them)."""
    out = []
    for i in range(len(self.heads)):
      attn, mlp = f"block{i + 1}/attn", f"block{i + 1}/mlp"
      out += [Units((f"{attn}/query", f"{attn}/key", f"{attn}/value"),
                    (f"{attn}/out",), block=self.head_dim, kind=HEAD),
              Units((f"{mlp}/fc1",), (f"{mlp}/fc2",), activation="gelu")]
    return tuple(out)

  def with_widths(self, widths: Sequence[int]) -> ViT:
    """The same ViT with widths[2i] heads (each head_dim wide) and
    widths[2i + 1] MLP units in block i (the coupling's order)."""
    widths = [int(w) for w in widths]
    return self.clone(heads=tuple(widths[0::2]), mlp_dims=tuple(widths[1::2]))


@register("vit")
def vit(num_classes: int, depth: int = 6, dim: int = 128, heads: int = 4,
        mlp_dim: int = 256, patch: int = 4) -> nn.Module:
  """A ViT of `depth` blocks, `heads` heads of dim / heads each, MLPs of
  `mlp_dim` units, `patch`-sized patches (`patch` samples of a sequence,
  `patch` x `patch` pixels of an image).

  Raises:
    LotteryError: 'model.<option>: ...' for an option that is not a positive
      integer, or heads that do not divide dim.
  """
  for option, value in (("depth", depth), ("dim", dim), ("heads", heads),
                        ("mlp_dim", mlp_dim), ("patch", patch)):
    check_int(option, value, 1)
  if dim % heads:
    raise LotteryError(f"model.heads: {heads} heads must divide model.dim "
                       f"{dim}")
  return ViT(num_classes=num_classes, dim=dim, heads=(heads,) * depth,
             head_dim=dim // heads, mlp_dims=(mlp_dim,) * depth, patch=patch)


@register("vit_tiny")
def vit_tiny(num_classes: int, depth: int = 2, dim: int = 32, heads: int = 4,
             mlp_dim: int = 64, patch: int = 4) -> nn.Module:
  """A 2-block, 4-head ViT of dim 32 for tests and smoke runs (MNIST-1D's 40
  samples: 10 tokens; a 32 x 32 image: 64 tokens)."""
  return vit(num_classes, depth=depth, dim=dim, heads=heads, mlp_dim=mlp_dim,
             patch=patch)
