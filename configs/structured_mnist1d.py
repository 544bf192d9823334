"""Structured against unstructured IMP on MNIST-1D, at equal parameter count.

The MNIST-1D recipe's model, data and training (configs/mnist1d.py: MLP
40-500-(residual 500-500)-10, Adam 2e-2, batch 100, 1500 steps, rewinding to
initialization), with the kernels prunable (biases are not) and 3 seeds
trained as replicates.

Default: neuron-structured IMP (`pruning.structure='neuron'`): each round
removes 20% of the surviving units of the residual stream (the model's one
unit set: fc1's and fc2's outputs with fc2's and out's input rows), ranked by
the L1 norm of their weights, for 8 rounds (500, 400, 320, 256, 205, 164, 131,
105, 84 units); every 2nd round the `scratch` control (Liu et al. 2019) trains
the shrunk architecture from its own fresh initialization. Round r's ticket
`lottery.export.export_ticket`s to a network of r's width.

':unstructured' is the same run with every weight on its own, and per-layer
rates that give each kernel the structured run's density: fc1 and out lose
20% of their weights per round (as 20% of the units take 20% of their rows or
columns), fc2 1 - 0.8^2 = 36% (its rows and columns both go). Round r of the
two runs keeps the same number of weights in every layer (to within 0.3%:
the two round a unit and a weight count differently), so their accuracies
compare at equal parameter count. No controls.

':cnn' is the comparison on the paper's CNN (configs/mnist1d.py:cnn's model
and training: three 1-D convs of 25 channels and a linear layer, Adam 1e-2,
4000 steps): each round removes 20% of every conv's surviving channels (with
the next layer's input slices; conv3's channels with their five rows each of
the linear layer's kernel), for 5 rounds (25, 20, 16, 13, 10, 8 channels).
':cnn,unstructured' prunes single weights at the rates that keep each
layer's count: conv1 and out 20% a round, conv2 and conv3 36% (their input
and output channels both go); units round differently from weights, so from
13 channels on the counts differ by up to 5.2% (conv2 of 10 channels keeps
300 weights, the unstructured one 315; a 6th round would differ by 19%).

Commands (the MLP's each 2-3 minutes on the loaded 2-core CPU, the CNN's
under a minute):
  python -m experiments.imp --config=structured_mnist1d --workdir=...
  python -m experiments.imp --config=structured_mnist1d:unstructured \\
      --workdir=...
  python -m experiments.imp --config=structured_mnist1d:quick --workdir=...
  python -m experiments.imp --config=structured_mnist1d:cnn --workdir=...
  python -m experiments.imp --config=structured_mnist1d:cnn,unstructured \\
      --workdir=...

Measured (docs/structured.md, seeds 0-2, mean +- std): dense 66.3 +- 0.8;
at equal weight counts the unstructured tickets beat the structured ones in
every round (at 19% of the weights 69.0 +- 1.8 against 64.1 +- 1.4; at 4.1%,
84 units, 71.0 +- 0.4 against 62.3 +- 0.7, scratch 60.9 +- 1.3), while the
structured tickets shrink to networks with 24x fewer multiply-adds at 4.1%
(at batch 256 on the 2-core CPU: 1.7x faster at 43%, 4.2-5.9x from 8.6%).
':cnn' (docs/structured.md): the order reverses: the channel-structured
tickets beat the unstructured ones in every round (at 16% of the weights,
8 channels, 84.8 +- 0.8 against 80.4 +- 1.7; dense 93.4 +- 0.8), and scratch
trails them (79.3 +- 0.4).
"""

from configs import mnist1d

ARGS = ("", "unstructured", "quick", "cnn", "cnn,unstructured", "cnn,quick")

FRACTION = 0.2  # Of the units per round (structured).


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  cnn = arg.startswith("cnn")
  # Its data, model and training.
  c = mnist1d.get_config("cnn" if cnn else "")
  c.pruning.update(fraction=FRACTION, rounds=5 if cnn else 8,
                   prunable=(".*kernel",), structure="neuron",
                   group_score="l1")
  c.controls = ("scratch",)
  c.controls_every = 2
  c.seeds.num = 3
  if arg.endswith("unstructured"):
    both = 1 - (1 - FRACTION) ** 2  # Their rows and columns both go.
    inner = ("conv2", "conv3") if cnn else ("fc2",)
    c.pruning.update(structure="unstructured", group_score="sum",
                     layer_fractions=",".join(f"{n}/kernel={both:.2f}"
                                              for n in inner))
    c.controls = ()
  elif arg.endswith("quick"):
    c.training.update(steps=20, eval_every=10, checkpoint_every=10)
    c.pruning.rounds = 2
    c.controls_every = 1
    c.seeds.num = 1
  return c
