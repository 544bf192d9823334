"""The one registry mechanism: every name-to-function registry is a
`Registry`; registering, looking up, filtering by info, unknown names, and
undoing a registration."""

import pytest

import lottery
from lottery import augment
from lottery import config as config_lib
from lottery import controls
from lottery import distributions
from lottery import imp
from lottery import method
from lottery import models
from lottery import scores
from lottery import sparse_updates
from lottery.registry import Registry


def test_every_registry_is_a_registry():
  regs = {"model": models._MODELS, "score": scores._SCORES,
          "control": controls._CONTROLS,
          "distribution": distributions._DISTRIBUTIONS,
          "augmentation": augment._AUGMENTS,
          "sparse method": sparse_updates._METHODS, "reset": imp.RESETS,
          "method": method._METHODS}
  for what, reg in regs.items():
    assert isinstance(reg, Registry) and reg.what == what
  assert set(method.names()) >= {"imp", "pai", "sparse"}
  # The default methods, 'nm' and 'sr_ste' (N:M sparse training, not
  # defaults).
  assert sparse_updates.names() == sorted(config_lib.SPARSE_METHODS +
                                          ("nm", "sr_ste"))
  assert sparse_updates.names(dynamic=True) == ["gmp", "nm", "rigl", "set",
                                                "sr_ste"]
  assert sparse_updates.names(every_step=True) == ["sr_ste"]
  assert set(sparse_updates.DYNAMIC) == {"set", "rigl", "gmp", "nm",
                                         "sr_ste"}
  assert set(imp.RESETS) == set(config_lib.RESETS)
  assert imp.RESETS["rewind"] is imp.RESETS.get("rewind")
  assert scores.names() == ["magnitude", "random"]
  assert scores.all_names() == ["grasp", "magnitude", "random", "snip",
                                "synflow"]
  assert scores.needs_model("snip") and not scores.needs_model("magnitude")
  assert scores._SCORES.info("grasp") == {"data": True}
  assert augment.names() == ["crop_flip", "none"]
  assert controls.names() == ["random_prune", "reinit", "scratch", "shuffle"]
  assert distributions.names() == ["erk", "uniform"]


def test_registry_api_and_errors(request):
  reg = Registry("widget", "config.widget")

  @reg.register("b", kind=1)
  def b():
    return "b"

  reg.register("a", kind=2)(lambda: "a")
  reg.register("c")(lambda: "c")
  assert reg.names() == ["a", "b", "c"] and list(reg) == ["a", "b", "c"]
  assert reg.names(kind=1) == ["b"] and reg.names(kind=3) == []
  assert reg.get("b") is b and reg["b"] is b and "b" in reg and len(reg) == 3
  assert reg.info("a") == {"kind": 2} and reg.info("c") == {}
  with pytest.raises(lottery.LotteryError, match=(
      r"^config.widget: unknown widget, must be one of \['a', 'b', 'c'\] "
      r"\(got 'z'\)$")):
    reg.get("z")
  with pytest.raises(lottery.LotteryError, match=r"^other.field: unknown"):
    reg.info("z", field="other.field")

  # A user's model through the module's decorator, undone afterwards.
  @models.register("my_tiny")
  def my_tiny(num_classes, width=3):
    return models.get("mlp_tiny", num_classes)

  request.addfinalizer(lambda: models.unregister("my_tiny"))
  assert "my_tiny" in models.names()
  assert models.options_of("my_tiny") == ("width",)
  with pytest.raises(lottery.LotteryError, match=(
      r"^model.name: unknown model, must be one of \[.*\] \(got 'nope'\)$")):
    models.get("nope", 10)


def test_unregister_undoes_register():
  reg = Registry("widget", "config.widget")
  reg.register("b")(lambda: "b")
  a = reg.register("a", kind=1)(lambda: "a")
  assert reg.unregister("a") is a
  assert "a" not in reg and reg.names() == ["b"] and len(reg) == 1
  assert reg.names(kind=1) == []
  with pytest.raises(lottery.LotteryError, match=(
      r"^config.widget: unknown widget, must be one of \['b'\] \(got 'a'\)$")):
    reg.unregister("a")
  with pytest.raises(lottery.LotteryError, match=r"^other.field: unknown"):
    reg.unregister("a", field="other.field")
  reg.register("a")(lambda: "a2")  # Registered again: a new entry.
  assert reg.get("a")() == "a2" and reg.info("a") == {}


class _Mine(method.Method):
  name = "mine"


@pytest.mark.parametrize("module,register", [
    (models, lambda: models.register("mine")(lambda num_classes: None)),
    (scores, lambda: scores.register("mine")(lambda params, key: params)),
    (controls, lambda: controls.register("mine")(lambda exp, t, key: t)),
    (distributions, lambda: distributions.register("mine")(
        lambda shapes, density: {})),
    (augment, lambda: augment.register("mine")(lambda key, x: x)),
    (sparse_updates, lambda: sparse_updates.register("mine", dynamic=False)(
        lambda mask, counts, **schedule: (None, 0))),
    (method, lambda: method.register(_Mine)),
    (imp.RESETS, lambda: imp.RESETS.register("mine")(lambda *a: None)),
], ids=["models", "scores", "controls", "distributions", "augment",
        "sparse_updates", "method", "resets"])
def test_every_public_register_has_its_unregister(module, register):
  """Each module with a public `register` undoes it with `unregister`;
  the registry is as before."""
  before = module.names()
  entry = register()
  assert "mine" in module.names()
  assert module.unregister("mine") is entry
  assert module.names() == before
  with pytest.raises(lottery.LotteryError, match=r"unknown .*\(got 'mine'\)$"):
    module.unregister("mine")
