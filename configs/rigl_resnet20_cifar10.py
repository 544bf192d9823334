"""RigL on CIFAR-10 with ResNet-20, the CIFAR recipe of Evci et al. 2020.

The paper's CIFAR-10 runs (its code: rigl/cifar_resnet/resnet_train_eval.py)
train WideResNet-22-2 for 97,656 steps (250 epochs) at batch 128 with SGD,
Nesterov momentum 0.9, L2 5e-4 on the kernels (not BatchNorm, not biases),
learning rate 0.1 divided by 5 at 30K, 60K
and 90K steps; masks change every 100 steps, drop fraction 0.3 cosine-annealed
to 0 at step 75K (end_fraction 0.768 here); the first conv stays dense
(prune_first_layer=False), the output layer is sparse. This recipe keeps that
schedule on the framework's ResNet-20 (272,474 parameters; OpenLTH's layout),
with padded random crops and flips, RigL at 50%, 20% and 10% density, ERK.

Needs CIFAR-10 prepared for TFDS in array_record format (see the README):
  python -m experiments.sparse --config=rigl_resnet20_cifar10 \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/rigl20
Add methods or the uniform distribution with e.g.
  --config.sparse.methods="('static', 'set', 'rigl')"
  --config.sparse.distribution="('erk', 'uniform')"
Quick variant (seconds, any 32x32x3 data):
  python -m experiments.sparse --config=rigl_resnet20_cifar10:quick ...

Expected: the paper reports WideResNet-22-2, not ResNet-20 (dense ~94%;
RigL at 50-90% sparsity within about a point of it, above SET and static,
its Fig. 4); no ResNet-20 figure is published there. Not run here (a 97K-step
run takes days on a 2-core CPU: use an accelerator).
"""

from lottery.config import base_config

ARGS = ("", "quick")


def get_config(arg: str = ""):
  c = base_config()
  c.method = "sparse"
  c.data.name = "cifar10"
  c.data.augment = "crop_flip"
  c.model.name = "resnet20"
  c.training.update(steps=97_656, batch_size=128, optimizer="sgd",
                    learning_rate=0.1, momentum=0.9, nesterov=True,
                    weight_decay=5e-4, weight_decay_on=(".*kernel",),
                    schedule="step",
                    lr_boundaries=(30_000, 60_000, 90_000), lr_decay=0.2,
                    eval_every=2_000, checkpoint_every=5_000)
  # Every kernel but the first conv ('conv/kernel'): prune_first_layer=False.
  c.pruning.prunable = ("stage.*kernel", "out/kernel")
  c.sparse.update(methods=("rigl",), densities=(0.5, 0.2, 0.1),
                  distribution=("erk",), update_every=100, drop_fraction=0.3,
                  end_fraction=0.768, begin_step=0, end_step=0)
  if arg == "quick":
    c.model.width = 4
    c.training.update(steps=20, batch_size=16, lr_boundaries=(10, 15),
                      eval_every=5, checkpoint_every=10)
    c.sparse.update(densities=(0.2,), update_every=5)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: 'quick')")
  return c
