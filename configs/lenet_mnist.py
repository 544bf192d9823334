"""LeNet-300-100 on MNIST: Frankle & Carbin 2019, Figure 3 / Table 1.

fc 300-100-10 (266,610 parameters), Glorot-normal init, Adam 1.2e-3, batch 60,
50K iterations, 5K training examples held out for early stopping (metrics
`early_stop_step` and `early_stop_test_accuracy`); layerwise magnitude pruning of the kernels, 20% per round and
10% for the output layer; rewind to initialization; 5 trials in the paper
(vary --config.seeds.*).

Needs MNIST prepared for TFDS in array_record format (see the README):
  python -m experiments.imp --config=configs/lenet_mnist.py \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/lenet

Expected (paper): weights remaining 51.3% (round 3), 21.1% (7), 13.5% (9),
7.0% (12), 3.6% (15), 1.9% (18). Tickets match dense accuracy (~98%) down to
~3.6% remaining and learn faster; random reinitialization falls below dense
from ~21% remaining. Local variant: `configs/lenet_mnist.py:local` (2K
iterations, 5 rounds) for a quick look on a CPU. Quick variant (seconds on
small data, any 28x28x1 images such as an .npz with --config.data.name=npz):
`lenet_mnist:quick` (20 steps of batch 16, 2 rounds with the controls on the
last, 256 held out).
"""

from lottery.config import base_config

ARGS = ("", "local", "quick")


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "mnist"
  c.data.validation_size = 5_000  # Early stopping on 5K held-out examples.
  c.model.name = "lenet_300_100"
  c.training.update(steps=50_000, batch_size=60, optimizer="adam",
                    learning_rate=1.2e-3, eval_every=100,
                    checkpoint_every=5_000)
  c.pruning.update(fraction=0.2, rounds=18, scope="layerwise",
                   prunable=(".*kernel",), layer_fractions="out/kernel=0.1",
                   reset="rewind", rewind_step=0)
  if arg == "local":
    c.training.update(steps=2_000, checkpoint_every=1_000)
    c.pruning.rounds = 5
  elif arg == "quick":
    # Chunks of 10 steps everywhere: the train loop compiles once.
    c.data.validation_size = 256
    c.training.update(steps=20, batch_size=16, eval_every=10,
                      checkpoint_every=10)
    c.pruning.rounds = 2
    c.controls_every = 2  # Controls on the last round only.
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  return c
