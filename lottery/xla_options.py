"""The XLA compiler options of the framework's model programs.

On the CPU, XLA runs convolutions through YNNPACK by default. For the zoo's
convolutional networks its other CPU kernels (Eigen's) are faster: on
ResNet-20's train step (batch 128) 1.21-1.40x: Eigen is faster at the 32-
and 64-channel stages, the two are close at the 16-channel one
(docs/performance.md has the measurements and the per-convolution table). `CPU_OPTIONS` keeps YNNPACK for dot products and
reductions and gives convolutions to Eigen.

Every framework program that runs a model is compiled with `options()`: the
training loop and its evaluation, pruning at initialization's scores, IMP's
score function and group criteria, and the stability path, so their numbers
agree bit for bit with each other. Programs without convolutions compile to
the same code with or without the option (tested for the MLPs and the ViT);
a convolution's result changes by float rounding. A user's `XLA_FLAGS` naming the option
wins (`--xla_cpu_experimental_ynn_fusion_type=...`), and the option is left
out where the default backend is not the CPU or the installed jaxlib does not
know it (found at the first compile, which then compiles without it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {
    _OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


_UNKNOWN = []  # Holds True once this jaxlib refused the option.


@functools.cache
def options() -> dict[str, str] | None:
  """The compiler options for the default backend (None: XLA's own).

  Decided at the first call (after the backend is up), then fixed for the
  process."""
  if _UNKNOWN or _OPTION in os.environ.get("XLA_FLAGS", ""):
    return None
  if jax.default_backend() != "cpu":
    return None
  return dict(CPU_OPTIONS)


def jit(fun: Callable[..., Any] | None = None, **kwargs) -> Callable:
  """`jax.jit(fun, **kwargs)` compiled with `options()`.

  Usable as a decorator, with or without keyword arguments. The jitted
  function is built at the first use (a call, `.lower`, ...), so importing a
  module that decorates with it does not start the backend."""
  if fun is None:
    return functools.partial(jit, **kwargs)
  return _Jitted(fun, kwargs)


class _Jitted:
  """A `jax.jit` of `fun` made on first use; calls and attributes go to it."""

  def __init__(self, fun: Callable[..., Any], kwargs: dict):
    functools.update_wrapper(self, fun, updated=())
    self._fun, self._kwargs, self._jitted = fun, kwargs, None
    self._options = None

  def _get(self):
    if self._jitted is None:
      self._options = options()
      self._jitted = jax.jit(self._fun, compiler_options=self._options,
                             **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    try:
      return self._get()(*args, **kwargs)
    except jax.errors.JaxRuntimeError as e:
      # A jaxlib that does not know the option refuses it at the first
      # compile, before any argument is used; compile with XLA's own.
      if _OPTION not in str(e) or self._options is None:
        raise
      _UNKNOWN.append(True)
      options.cache_clear()
      self._jitted = None
      return self._get()(*args, **kwargs)

  def __getattr__(self, name: str):
    if name.startswith("__") or name in ("_fun", "_kwargs", "_jitted",
                                         "_options"):
      raise AttributeError(name)
    return getattr(self._get(), name)
