"""Conv-2 / Conv-4 / Conv-6 on CIFAR-10: Frankle & Carbin 2019, Figure 5.

VGG-style 3x3 convs with 2x2 max-pooling, fc 256-256-10, Glorot-normal init,
batch 60, Adam, 5K training examples held out for early stopping; layerwise magnitude pruning of kernels: convs at 10% per round
(15% for Conv-6), fc at 20%, output at 10%; rewind to initialization.

  arch   iterations  Adam lr
  conv2  20K         2e-4
  conv4  25K         3e-4
  conv6  30K         3e-4

Needs CIFAR-10 prepared for TFDS in array_record format (see the README):
  python -m experiments.imp --config=configs/conv_cifar10.py:conv4 \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/conv4

Quick variant (seconds on small data, any 32x32x3 images such as an .npz with
--config.data.name=npz): the argument `<arch>,quick` (`conv2,quick`,
`conv4,quick`, `conv6,quick`; `quick` alone is `conv2,quick`) keeps the
architecture and the pruning rates and trains 20 steps of batch 16 for 2
rounds (controls on the last), holding out 256 examples:
  python -m experiments.imp --config=conv_cifar10:conv4,quick --workdir=...

Expected (paper): winning tickets beat the dense network by about 3.3-3.5
points at their best density and stay above it down to ~2% of weights
remaining; randomly reinitialized tickets fall behind early.
"""

from lottery.config import base_config

ARCHS = ("conv2", "conv4", "conv6")
ARGS = ARCHS + ("quick",) + tuple(f"{a},quick" for a in ARCHS)
_RECIPES = {  # arch: (iterations, learning rate, conv rate)
    "conv2": (20_000, 2e-4, 0.1),
    "conv4": (25_000, 3e-4, 0.1),
    "conv6": (30_000, 3e-4, 0.15),
}


def get_config(arg: str = "conv4"):
  arch, _, variant = (arg or "conv4").partition(",")
  if arch == "quick" and not variant:
    arch, variant = "conv2", "quick"
  if arch not in _RECIPES or variant not in ("", "quick"):
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  steps, lr, conv_rate = _RECIPES[arch]
  c = base_config()
  c.data.name = "cifar10"
  c.data.validation_size = 5_000  # Early stopping on 5K held-out examples.
  c.model.name = arch
  c.training.update(steps=steps, batch_size=60, optimizer="adam",
                    learning_rate=lr, eval_every=100, checkpoint_every=2_500)
  c.pruning.update(fraction=0.2, rounds=20, scope="layerwise",
                   prunable=(".*kernel",),
                   layer_fractions=f"conv.*/kernel={conv_rate},out/kernel=0.1",
                   reset="rewind", rewind_step=0)
  if variant == "quick":
    # Chunks of 10 steps everywhere: the train loop compiles once.
    c.data.validation_size = 256
    c.training.update(steps=20, batch_size=16, eval_every=10,
                      checkpoint_every=10)
    c.pruning.rounds = 2
    c.controls_every = 2  # Controls on the last round only.
  return c
