"""lottery.export: a shrunk network on disk, loaded back from the registry and
run with plain `model.apply`; refusals before anything is written."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery
from lottery import export as export_lib
from lottery import masks
from lottery import models
from lottery import pruning
from lottery import structure
from lottery.models import convolution
from lottery.errors import LotteryError

from conftest import quiet
from conftest import tiny


def _neuron_pruned(name, shape, fraction, structure_="neuron", **options):
  """A fresh `name` with nonzero biases (and moved BatchNorm statistics),
  `fraction` of its units (`structure_`) pruned by magnitude: (params,
  state, mask)."""
  model = models.get(name, 10, **options)
  variables = model.init(jax.random.key(0), jnp.ones((1,) + shape))
  params = jax.tree.map(lambda x: x + 0.05, variables.pop("params"))
  state = jax.tree.map(lambda v: v + 0.3, dict(variables))
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       fraction, structure=structure_, coupling=model)
  return model, params, state, mask


@pytest.mark.slow
def test_an_exported_vit_has_its_kept_heads(tmp_path):
  """architecture.json's widths are in with_widths' units: heads, not
  their columns."""
  model, params, state, mask = _neuron_pruned("vit_tiny", (40,), 0.5, "head")
  arch = export_lib.export(tmp_path / "out", params, state, mask,
                           model="vit_tiny", num_classes=10)
  heads = [int((~d).sum()) for d in
           structure.whole_units(mask, model.coupling()).values()]
  assert arch["widths"] == heads and heads[0] < model.heads[0]
  small, small_params, _ = export_lib.load_exported(tmp_path / "out")
  x = jax.random.normal(jax.random.key(1), (4, 40))
  want = model.apply({"params": lottery.apply_mask(mask, params)}, x)
  np.testing.assert_allclose(small.apply({"params": small_params}, x), want,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, shape, options", [
    ("mnist1d_mlp", (40,), {}),  # A residual stream: silent units stay.
    pytest.param("lenet_300_100", (784,), {}, marks=pytest.mark.slow),
    # BatchNorm statistics sliced with the blocks' inner channels.
    pytest.param("resnet20", (32, 32, 3), {"width": 8},
                 marks=pytest.mark.slow),
])
def test_exported_network_computes_what_the_masked_one_computes(
    name, shape, options, tmp_path):
  model, params, state, mask = _neuron_pruned(name, shape, 0.5, **options)
  arch = export_lib.export(tmp_path / "out", params, state, mask, model=name,
                           num_classes=10, options=options,
                           source={"note": "test"})
  kept = [int((~d).sum()) for d in
          structure.whole_units(mask, model.coupling()).values()]
  assert arch == {"format": export_lib.FORMAT, "model": name,
                  "options": options, "num_classes": 10, "widths": kept,
                  "source": {"note": "test"}}
  assert json.loads((tmp_path / "out" / "architecture.json").read_text())[
      "widths"] == kept
  small, small_params, small_state = export_lib.load_exported(tmp_path / "out")
  assert set(small_state) == set(state)
  x = jax.random.normal(jax.random.key(1), (4,) + shape)
  want = model.apply({"params": lottery.apply_mask(mask, params), **state}, x)
  # Plain Flax: the registry's module at the exported widths, no mask.
  got = jax.jit(small.apply)({"params": small_params, **small_state}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  n_small = sum(np.size(a) for a in jax.tree.leaves(small_params))
  assert n_small < sum(np.size(a) for a in jax.tree.leaves(params))
  assert type(small) is type(model)
  # Loaded as `shrink` returns it: narrow convolutions as sums of taps.
  assert getattr(small, "narrow", None) == (
      None if name != "resnet20" else convolution.NARROW)


def test_a_model_without_units_is_exported_at_full_size(tmp_path, unitless):
  model = models.get(unitless, 10)
  params = model.init(jax.random.key(0), jnp.ones((1, 8)))["params"]
  mask = pruning.prune(masks.make_mask(params), jax.tree.map(jnp.abs, params),
                       0.7)
  arch = export_lib.export(tmp_path / "out", params, {}, mask, model=unitless,
                           num_classes=10)
  assert arch["widths"] is None
  small, small_params, state = export_lib.load_exported(tmp_path / "out")
  assert state == {}
  x = jax.random.normal(jax.random.key(1), (2, 8))
  np.testing.assert_array_equal(
      small.apply({"params": small_params}, x),
      model.apply({"params": lottery.apply_mask(mask, params)}, x))


def test_export_ticket_exports_a_structured_ticket_of_a_run(npz_path,
                                                            tmp_path):
  cfg = tiny(npz_path, **{"pruning.structure": "neuron", "pruning.rounds": 1,
                          "controls": ()})
  lottery.run(cfg, tmp_path / "wd", log=quiet)
  arch = lottery.export_ticket(tmp_path / "wd", tmp_path / "out", 1)
  t = lottery.load_ticket(tmp_path / "wd", 1)
  assert t.coords["round"] == 1
  assert arch["source"] == {"workdir": str(tmp_path / "wd"),
                            "coords": t.coords,
                            "weights": "trained",
                            "density": t.metrics["density"],
                            "test_accuracy": t.metrics["test_accuracy"]}
  assert (arch["model"], arch["num_classes"]) == ("mlp_tiny", 3)
  assert arch["widths"] == [16]  # Half of mlp_tiny's 32 units.
  small, small_params, _ = lottery.load_exported(tmp_path / "out")
  x = np.load(npz_path)["x_test"]
  full = models.get("mlp_tiny", 3)
  np.testing.assert_allclose(
      small.apply({"params": small_params}, x),
      full.apply({"params": lottery.apply_mask(t.mask, t.trained_params)}, x),
      rtol=1e-5, atol=1e-5)
  rewind = lottery.export_ticket(tmp_path / "wd", tmp_path / "rewind", 1,
                                 weights="rewind")
  assert rewind["source"]["weights"] == "rewind"
  _, rewind_params, _ = lottery.load_exported(tmp_path / "rewind")
  assert not np.array_equal(rewind_params["fc1"]["kernel"],
                            small_params["fc1"]["kernel"])
  with pytest.raises(LotteryError, match="^weights: must be 'trained' or "
                     "'rewind'"):
    lottery.export_ticket(tmp_path / "wd", tmp_path / "x", 1, weights="init")


def test_export_never_overwrites_and_refuses_bad_input_before_writing(
    tmp_path):
  model, params, state, mask = _neuron_pruned("mlp_tiny", (6,), 0.5)
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  with pytest.raises(LotteryError, match=r"^directory: '.*busy' already "
                     r"holds something; export writes only into a new or "
                     r"empty directory$"):
    export_lib.export(busy, params, state, mask, model="mlp_tiny",
                      num_classes=10)
  assert [p.name for p in busy.iterdir()] == ["notes.txt"]
  with pytest.raises(LotteryError,
                     match=r"^model: unknown model, .*\(got 'nope'\)$"):
    export_lib.export(tmp_path / "a", params, state, mask, model="nope",
                      num_classes=10)
  with pytest.raises(LotteryError, match=r"^params: not those of model "
                     r"'mnist1d_mlp' \(no 'fc2/kernel'; they hold "
                     r"\['fc1/bias', 'fc1/kernel', 'out/bias', "
                     r"'out/kernel'\]\)$"):
    export_lib.export(tmp_path / "a", params, state, mask,
                      model="mnist1d_mlp", num_classes=10)
  with pytest.raises(LotteryError, match="^num_classes: 3, but the params' "
                     "output layer 'out' has 10 units$"):
    export_lib.export(tmp_path / "a", params, state, mask, model="mlp_tiny",
                      num_classes=3)
  bad = {**mask, "fc1": {**mask["fc1"], "kernel": mask["fc1"]["kernel"][:2]}}
  with pytest.raises(LotteryError, match="^mask: "):
    export_lib.export(tmp_path / "a", params, state, bad, model="mlp_tiny",
                      num_classes=10)
  assert not (tmp_path / "a").exists()
  # An empty directory is fine; once written, it is never written again.
  (tmp_path / "a").mkdir()
  export_lib.export(tmp_path / "a", params, state, mask, model="mlp_tiny",
                    num_classes=10)
  with pytest.raises(LotteryError, match="already holds something"):
    export_lib.export(tmp_path / "a", params, state, mask, model="mlp_tiny",
                      num_classes=10)


def test_load_refuses_a_missing_damaged_or_mismatched_export(tmp_path):
  model, params, state, mask = _neuron_pruned("mlp_tiny", (6,), 0.5)
  with pytest.raises(LotteryError, match=r"^directory: '.*nothing' holds no "
                     r"exported network \(architecture.json missing\)$"):
    export_lib.load_exported(tmp_path / "nothing")
  for name, fraction in (("half", 0.5), ("quarter", 0.75)):
    _, p, s, m = _neuron_pruned("mlp_tiny", (6,), fraction)
    export_lib.export(tmp_path / name, p, s, m, model="mlp_tiny",
                      num_classes=10)
  # An edited architecture.json no longer matches its checksum.
  arch_file = tmp_path / "half" / "architecture.json"
  text = arch_file.read_text()
  arch_file.write_text(text.replace('"num_classes": 10', '"num_classes": 9'))
  with pytest.raises(LotteryError, match=r"^directory: file '.*half/"
                     r"architecture.json' is damaged "
                     r"\(its content differs from its checksum\); export the "
                     r"network again into a new directory"):
    export_lib.load_exported(tmp_path / "half")
  arch_file.write_text(text)
  export_lib.load_exported(tmp_path / "half")
  # Arrays of another export beside it: widths 8 described, 16 held.
  (tmp_path / "half" / "arrays").rename(tmp_path / "half_arrays")
  (tmp_path / "quarter" / "arrays").rename(tmp_path / "half" / "arrays")
  with pytest.raises(LotteryError, match=r"^directory: '.*half/architecture"
                     r".json' describes widths \[16\] and 10 classes, the "
                     r"arrays beside it hold \[8\] and 10; export the network "
                     r"again into a new directory$"):
    export_lib.load_exported(tmp_path / "half")
