"""The compiler options of the framework's model programs (CPU)."""

import re

import jax
import jax.numpy as jnp
import pytest

from lottery import models
from lottery import xla_options

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="the options are the CPU's")


def _text(compiled) -> str:
  # Module names and source locations differ between compilations.
  return re.sub(r"module_\d+|, metadata=\{[^}]*\}|stack_frame_id=\d+", "",
                compiled.as_text())


def _grad_fn(name, shape, **kwargs):
  model = models.get(name, 10, **kwargs)
  x = jnp.ones(shape)
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    out = model.apply({**variables, "params": params}, x, train=True,
                      mutable=["batch_stats"])[0]
    return jnp.sum(out ** 2)
  return jax.grad(loss), variables["params"]


def test_options_on_the_cpu():
  assert xla_options.options() == xla_options.CPU_OPTIONS


def test_a_users_xla_flags_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type="
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
  xla_options.options.cache_clear()
  try:
    assert xla_options.options() is None
  finally:
    monkeypatch.undo()
    xla_options.options.cache_clear()
  assert xla_options.options() == xla_options.CPU_OPTIONS


@pytest.mark.parametrize("name,shape,convolutions", [
    ("lenet_300_100", (4, 28, 28, 1), False), ("mnist1d_mlp", (4, 40), False),
    ("vit_tiny", (4, 40), False), ("conv2", (4, 32, 32, 3), True)])
def test_only_convolutional_programs_change(name, shape, convolutions):
  fn, params = _grad_fn(name, shape)
  lowered = jax.jit(fn).lower(params)
  plain = _text(lowered.compile())
  ours = _text(xla_options.jit(fn).lower(params).compile())
  assert ours == _text(lowered.compile(
      compiler_options=xla_options.CPU_OPTIONS))
  assert (ours != plain) == convolutions


def test_jit_is_lazy_and_keeps_jit_arguments():
  calls = []

  @xla_options.jit(static_argnames=("k",))
  def f(x, k):
    calls.append(k)
    return x * k
  assert f.__name__ == "f" and not calls
  assert float(f(jnp.float32(2), k=3)) == 6.0
  assert float(f(jnp.float32(4), k=3)) == 12.0
  assert calls == [3]  # Traced once: static k, the same compiled program.


def test_a_jaxlib_without_the_option_compiles_without_it(monkeypatch):
  monkeypatch.setattr(xla_options, "_OPTION", "xla_cpu_no_such_option")
  monkeypatch.setattr(xla_options, "CPU_OPTIONS",
                      {"xla_cpu_no_such_option": "1"})
  monkeypatch.setattr(xla_options, "_UNKNOWN", [])
  xla_options.options.cache_clear()
  try:
    assert xla_options.options() == {"xla_cpu_no_such_option": "1"}
    f = xla_options.jit(lambda x: x * 2)
    assert float(f(jnp.float32(3))) == 6.0
    assert xla_options.options() is None
  finally:
    monkeypatch.undo()
    xla_options.options.cache_clear()
