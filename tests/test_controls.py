"""lottery.controls: the scratch control (Liu et al. 2019) and its shrink
placement (`lottery.shrink.scratch`)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import masks
from lottery import models
from lottery import pruning
from lottery import rng
from lottery import structure
from lottery.errors import LotteryError

from conftest import leaves_equal
from conftest import quiet
from conftest import tiny

# lottery.shrink is the function; its module holds `scratch`.
shrink_module = importlib.import_module("lottery.shrink")


@pytest.mark.parametrize("name, shape, options, structures", [
    ("lenet_300_100", (1, 28, 28, 1), {}, ("neuron",)),
    pytest.param("vgg11", (1, 32, 32, 3), {"width": 4}, ("neuron",),
                 marks=pytest.mark.slow),
    # Inner channels and residual streams, BatchNorm statistics placed.
    pytest.param("resnet20", (1, 8, 8, 3), {"width": 4}, ("neuron",),
                 marks=pytest.mark.slow),
    # Bottlenecks: two inner sets per block, the stem's stream and four more.
    pytest.param("resnet50", (1, 32, 32, 3), {"width": 2}, ("neuron",),
                 marks=pytest.mark.slow),
    # The last conv's channels read through a flatten; heads of 8 columns.
    ("conv2", (1, 8, 8, 3), {}, ("neuron",)),
    pytest.param("vit_tiny", (1, 40), {}, ("head", "neuron"),
                 marks=pytest.mark.slow),
])
def test_scratch_places_the_shrunk_models_own_init(name, shape, options,
                                                   structures):
  model = models.get(name, 10, **options)
  variables = dict(model.init(jax.random.key(0), jnp.ones(shape)))
  params = variables.pop("params")
  mask = masks.make_mask(params)
  for s in structures:
    mask = pruning.prune(mask, jax.tree.map(jnp.abs, params), 0.5,
                         structure=s, coupling=model)
  x = jnp.ones(shape)
  full, state = shrink_module.scratch(model, params, variables, mask,
                                      jax.random.key(5), x)
  assert jax.tree.map(np.shape, full) == jax.tree.map(np.shape, params)
  small, small_params, small_state = lottery.shrink(model, full, state, mask)
  fresh = dict(small.init(rng.flat(jax.random.key(5)), x))
  # Shrinking the placed weights gives back the small model's fresh init,
  # bit for bit (its fan-ins: not the full model's values).
  assert leaves_equal(small_params, fresh.pop("params"))
  assert leaves_equal(small_state, fresh)
  assert not leaves_equal(masks.apply_mask(mask, full),
                          masks.apply_mask(mask, params))
  inputs = jax.random.normal(jax.random.key(1), (4,) + shape[1:])
  np.testing.assert_allclose(
      model.apply({"params": masks.apply_mask(mask, full), **state}, inputs),
      small.apply({"params": small_params, **small_state}, inputs),
      rtol=1e-5, atol=1e-5)


def test_imp_trains_the_scratch_control_of_a_neuron_ticket(npz_path,
                                                           tmp_path):
  cfg = tiny(npz_path, **{"pruning.structure": "neuron",
                          "controls": ("scratch",)})
  summary = lottery.run(cfg, tmp_path, log=quiet)
  last = summary["rounds"][-1]
  assert 0 < last["controls"]["scratch"]["test_accuracy"] <= 1
  ticket = lottery.load_ticket(tmp_path, 2, "ticket")
  control = lottery.load_ticket(tmp_path, 2, "scratch")
  assert leaves_equal(control.mask, ticket.mask)
  # mlp_tiny's 32 units keep 8 in round 2; the control starts from an
  # 8-unit MLP's fresh init, placed at the ticket's units.
  kept = ~structure.whole_units(ticket.mask, cfg_model(cfg).coupling())["fc1"]
  assert kept.sum() == 8
  fc1 = np.asarray(control.rewind_params["fc1"]["kernel"])
  assert not np.array_equal(fc1[:, kept],
                            np.asarray(ticket.rewind_params["fc1"]
                                       ["kernel"])[:, kept])
  assert np.all(np.asarray(control.rewind_params["fc1"]["bias"])[~kept] == 0)


def test_scratch_of_weight_tickets_says_what_it_is(npz_path, tmp_path):
  # Unstructured and N:M tickets shrink only by their empty units: a note.
  from lottery import progress  # pylint: disable=g-import-not-at-top
  for structure in ("unstructured", "2:4"):
    lines = []

    class Notes(progress.NullProgress):
      def info(self, line):
        lines.append(line)
    cfg = tiny(npz_path, **{"pruning.structure": structure,
                            "pruning.rounds": 1, "controls": ("scratch",)})
    lottery.driver.run(cfg, tmp_path / structure.replace(":", "_"),
                       progress=Notes())
    assert [l for l in lines if "'scratch'" in l] == [
        f"note: the 'scratch' control under pruning.structure={structure!r}: "
        f"a ticket shrinks only by the units its mask leaves empty, so "
        f"scratch is close to reinit until units die"]


def cfg_model(cfg):
  return models.get(cfg.model.name, 3)


def test_scratch_needs_a_model_shrink_can_rebuild(npz_path, tmp_path,
                                                 unitless):
  cfg = tiny(npz_path, **{"model.name": unitless, "controls": ("scratch",)})
  with pytest.raises(LotteryError, match="^controls: the 'scratch' control "
                     "needs a model that declares its units .* Unitless does "
                     "not$"):
    lottery.run(cfg, tmp_path / "wd", log=quiet)
  assert not (tmp_path / "wd").exists() or not any(
      (tmp_path / "wd").iterdir())
