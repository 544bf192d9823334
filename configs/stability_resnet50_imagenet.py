"""Instability analysis of ResNet-50 on ImageNet (Frankle, Dziugaite, Roy &
Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"),
trained as configs/rigl_resnet50_imagenet.py trains its dense network (SGD
1.6 with Nesterov momentum, batch 4096, 32K steps ≈ 102 epochs, x0.1 at
epochs 30, 70 and 90); the paper trains at batch 1024 for 90 epochs, so
its k (in iterations) is 4x these steps. Without that recipe's label
smoothing and host-side crops (the data are held in memory). Rewind steps at 0, 1, 2, 4, 6
and 10 epochs. The running statistics of every point of the path are
recomputed over the training set before it is evaluated.

Needs ImageNet prepared for TFDS, resized to one image size (see
docs/data.md), and an accelerator with the memory of the whole dataset:
  python -m experiments.run --config=stability_resnet50_imagenet \\
      --config.data.data_dir=$HOME/tensorflow_datasets --workdir=/tmp/lmc_r50
Quick variant (seconds, on CIFAR-shaped data, any 32x32x3 images):
`stability_resnet50_imagenet:quick`.

Expected (paper, ≈): ResNet-50 is unstable at initialization and becomes
stable within the first few epochs (≈ 4-5); IMP finds matching tickets
only when rewound to around that point, never at k = 0.
"""

from configs import rigl_resnet50_imagenet
from lottery import stability
from lottery.config import IMAGE_SIZE

ARGS = ("", "quick")
EPOCHS = (0, 1, 2, 4, 6, 10)


def get_config(arg: str = ""):
  if arg not in ARGS:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  c = rigl_resnet50_imagenet.get_config(arg)
  c.method = "imp"  # The dense training of the sparse recipe.
  # Without its label smoothing and host-side crops: the path's statistics
  # are recomputed over the training set held in memory (data.crop='none').
  c.data.update(source="memory", crop="none", image_size=IMAGE_SIZE)
  c.training.label_smoothing = 0.0
  if arg:
    c.data.name = "cifar10"
  if arg:
    return stability.recipe(c, (0, 5), points=3)
  steps = tuple(round(e * rigl_resnet50_imagenet.STEPS_PER_EPOCH)
                for e in EPOCHS)
  return stability.recipe(c, steps)
