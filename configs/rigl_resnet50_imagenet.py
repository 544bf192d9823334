"""RigL on ImageNet with ResNet-50, Evci et al. 2020 (1x training).

The training recipe of the paper's released code (rigl/imagenet_resnet/
imagenet_train_eval.py, checked): 32,000 steps at batch 4096 (~102 epochs),
SGD with Nesterov momentum 0.9, L2 weight decay 1e-4 on the kernels (not
BatchNorm, not biases), learning rate 0.1 x
4096 / 256 = 1.6 dropped 10x at epochs 30, 70 and 90 (steps 9,384, 21,895,
28,151), no warm-up in that code, label smoothing 0.1; masks change every 100
steps, drop fraction 0.3 cosine-annealed to 0 at step 25,000 (end_fraction
0.78125); ERK over every kernel (`:uniform` keeps the first conv dense, as
the paper's uniform models do). Its ResNet-50 starts each bottleneck's last
BatchNorm scale at 0 (model.bn_init='zero_last', rigl/imagenet_resnet/
resnet_model.py). Its input pipeline (the TF/TPU ResNet
preprocessing): Inception-style random-resized crops to 224x224 and
horizontal flips for training, the central 224 of 256 for evaluation;
here decoded and cropped on the host as the batches are streamed
(data.crop='inception', see docs/data.md), from TFDS's imagenet2012
prepared in array_record format.

  python -m experiments.sparse --config=rigl_resnet50_imagenet \\
      --config.data.data_dir=DIR --workdir=/tmp/rigl50
Quick variant (32x32 crops, a width-4 ResNet-50, 10 steps of 8, on mock TFDS
data or any images: --config.data.name=images --config.data.path=FOLDER;
1.5-4.5 minutes on the loaded 2-core CPU of the tests, mostly compiling):
  python -m experiments.sparse --config=rigl_resnet50_imagenet:quick ...

Expected (paper, top-1): dense 76.8; RigL ERK at 80% sparsity (density 0.2)
75.1, at 90% 73.0; uniform 74.6 and 72.0 (README of google-research/rigl,
1x training), from runs on Google Cloud TPUs. Not run here: use
accelerators and a host whose cores decode and crop images as fast as the
accelerators train on them (docs/data.md).
"""

from lottery.config import base_config

ARGS = ("", "uniform", "quick")

STEPS_PER_EPOCH = 1_281_167 / 4096


def get_config(arg: str = ""):
  c = base_config()
  c.method = "sparse"
  c.data.update(name="imagenet2012", source="stream", crop="inception",
                image_size=224)
  c.model.update(name="resnet50", bn_init="zero_last")
  c.training.update(
      steps=32_000, batch_size=4096, optimizer="sgd", learning_rate=1.6,
      momentum=0.9, nesterov=True, weight_decay=1e-4,
      weight_decay_on=(".*kernel",), schedule="step",
      lr_boundaries=tuple(round(e * STEPS_PER_EPOCH) for e in (30, 70, 90)),
      lr_decay=0.1, label_smoothing=0.1, eval_every=2_000,
      checkpoint_every=1_000)
  c.pruning.prunable = (".*kernel",)
  c.sparse.update(methods=("rigl",), densities=(0.2, 0.1),
                  distribution=("erk",), update_every=100, drop_fraction=0.3,
                  end_fraction=0.78125, begin_step=0, end_step=0)
  if arg == "uniform":
    c.pruning.prunable = ("stage.*kernel", "out/kernel")
    c.sparse.distribution = ("uniform",)
  elif arg == "quick":
    c.data.image_size = 32
    c.model.width = 4
    c.training.update(steps=10, batch_size=8, lr_boundaries=(5,),
                      eval_every=5, checkpoint_every=5)
    c.sparse.update(densities=(0.2,), update_every=5)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r} (known: {ARGS})")
  return c
