"""Model "bit": BiT (ResNet-v2, GroupNorm + Weight Standardisation) fine-tuning.

`--hyperrule` (default on) applies BiT-HyperRule (big_transfer `bit_hyperrule.py`):
  resolution  images < 96x96 (CIFAR): resize 160, crop 128; otherwise resize 512, crop 480
  schedule    training examples < 20k: 500 steps, warm-up 100, lr / 10 after 200/300/400
              < 500k: 10k steps, warm-up 500, after 3k/6k/9k
              >= 500k: 20k steps, warm-up 500, after 6k/12k/18k
  MixUp       alpha 0.1 with >= 20k training examples, else off
  steps       --train_steps / --train_epochs change the length; the warm-up and the decay
              points stay the same fractions of it (500 steps: 20 %, 40/60/80 %; 10k and
              20k: 5 % and 2.5 %, 30/60/90 %), as HyperRule scales its own schedules
`--nohyperrule` follows keras-io `bit.py` / the Huawei port (ID2496): resize 384, crop 224,
no warm-up, lr / 10 after 200/300/400 whatever the length, 500 * 512 / batch steps, no MixUp.
Both: SGD momentum 0.9, lr 0.003 * batch / 512, no weight decay, zero-initialised head,
images in [-1, 1] (the .npz weights' range; the port's TF-Hub model wanted [0, 1]),
evaluation at the crop size (the port evaluated at 384 uncropped, models.md §3.7).
Splits: tf_flowers train[:85%] / train[85%:], CIFAR train / test, image folder
train / validation. Every value can be overridden by its flag (configure() works the
recipe out once and logs the schedule).

The TF2 ModelZoo seed's flag names are accepted (`tf2_seed_flags`):
--batch_size, --epochs (full passes over the training split here; the seed's Keras epochs
were 10 steps each), --log_steps, --use_mixlist + --mixlist_file, --fusion_off_flag +
--fusion_off_file, --over_dump(_path), --data_dump_flag/_step/_path, --profiling(_dump_path).
Not ported: --eval_static (evaluation always covers every example).
"""
from absl import logging

from estimators import finetune
from estimators import registry
from estimators.bit import model_fn as model_fn_lib
from estimators.bit import network
from estimators.bit import weights
from input_fns import tf_flowers
from preprocessing import transfer

BASE_LR = 0.003
REFERENCE_BATCH = 512
SPLITS = {
    "tf_flowers": (tf_flowers.TRAIN_SPLIT, tf_flowers.EVAL_SPLIT),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "image_folder": ("train", "validation"),
}
KERAS_IO_RESOLUTION = (384, 224)
KERAS_IO_BOUNDARIES = (200, 300, 400)
KERAS_IO_SCHEDULE_LENGTH = 500


def hyperrule_resolution(dataset):
  """(resize, crop): bit_hyperrule.get_resolution by the dataset's image area."""
  return (160, 128) if dataset in finetune.SMALL_IMAGE_DATASETS else (512, 480)


def hyperrule_schedule(num_examples):
  """(steps, warm-up, boundaries, mixup alpha) for a training set size."""
  if num_examples < 20000:
    return 500, 100, (200, 300, 400), 0.0
  if num_examples < 500000:
    return 10000, 500, (3000, 6000, 9000), 0.1
  return 20000, 500, (6000, 12000, 18000), 0.1


def reference_schedule(hyperrule, train_examples, train_batch_size):
  """(steps, warm-up, boundaries, mixup alpha) of the recipe for this run's data and
  batch: BiT-HyperRule's by training set size, else keras-io's."""
  if hyperrule:
    return hyperrule_schedule(train_examples)
  return (int(KERAS_IO_SCHEDULE_LENGTH * REFERENCE_BATCH / train_batch_size), 0,
          KERAS_IO_BOUNDARIES, 0.0)


def scale_schedule(train_steps, length, warmup, boundaries):
  """(warm-up, boundaries) at the same fractions of `train_steps` as of `length`; a
  boundary is at least step 1 (the piecewise schedule needs positive ones)."""
  scale = train_steps / float(length)
  return (int(round(warmup * scale)),
          [max(1, int(round(boundary * scale))) for boundary in boundaries])


def given_boundaries(values):
  """--lr_boundaries as increasing positive step numbers (ValueError naming the flag)."""
  text = ",".join(values)
  try:
    boundaries = [int(value) for value in values]
  except ValueError:
    raise ValueError("--lr_boundaries=%s must be integers" % text)
  registry.require(boundaries == sorted(boundaries) and all(b > 0 for b in boundaries),
                   "--lr_boundaries=%s must be positive and increasing" % text)
  return boundaries


def log_schedule(config, hyperrule, reference):
  """The run's schedule in one line, beside the reference it was scaled from."""
  length, warmup, boundaries, _ = reference
  logging.info(
      "BiT schedule: %d steps, linear warm-up over %d, lr %g / 10 after steps %s (%s)",
      config.train_steps, config.warmup_steps, config.learning_rate,
      ", ".join(str(b) for b in config.lr_boundaries) or "none",
      "BiT-HyperRule: %d steps, warm-up %d, boundaries %s, both scaled to the run's "
      "length unless given" % (length, warmup, "/".join(str(b) for b in boundaries))
      if hyperrule else "keras-io's boundaries, whatever the length")


@registry.register
class BigTransfer(finetune.TransferModel):

  name = "bit"
  network_module, model_fn_module, weights_module = network, model_fn_lib, weights
  splits = SPLITS
  tf2_seed_flags = True
  flags = finetune.FINE_TUNING_FLAGS + (
      registry.Flag("bit_model", "enum", "R50x1", "BiT variant.", tuple(network.VARIANTS)),
      registry.Flag("hyperrule", "bool", True, "BiT-HyperRule resolution, schedule and "
                    "MixUp (off: the keras-io / Huawei-port settings); its warm-up and lr "
                    "boundaries scale with --train_steps / --train_epochs."),
      registry.Flag("lr_boundaries", "list", None, "Steps after which the lr drops 10x."),
      registry.Flag("resize_size", "integer", None, "Training resize before the random crop.",
                    registry.POSITIVE),
  )

  def counts_train_examples(self, flag_values):
    return flag_values.hyperrule  # its schedule goes by the training set's size

  def recipe(self, flag_values, config):
    """The hyperparameters: flags over BiT-HyperRule's (or keras-io's) values."""
    reference = reference_schedule(flag_values.hyperrule, config.train_examples,
                                   config.train_batch_size)
    length, warmup, boundaries, mixup = reference
    steps = finetune.train_steps(flag_values, config, length)
    if flag_values.hyperrule:
      resize, crop = hyperrule_resolution(config.dataset)
      warmup, boundaries = scale_schedule(steps, length, warmup, boundaries)
    else:
      resize, crop = KERAS_IO_RESOLUTION
    if flag_values.lr_boundaries is not None:
      boundaries = given_boundaries(flag_values.lr_boundaries)
    config = config.replace(
        variant=flag_values.bit_model,
        resize_size=finetune.pick(flag_values.resize_size, resize),
        image_size=finetune.pick(flag_values.image_size, crop),
        learning_rate=finetune.pick(
            flag_values.learning_rate,
            BASE_LR * config.train_batch_size / float(REFERENCE_BATCH)),
        warmup_steps=finetune.pick(flag_values.warmup_steps, warmup),
        lr_boundaries=list(boundaries), train_steps=steps,
        grad_clip_norm=finetune.pick(flag_values.grad_clip_norm, 0.0),
        mixup_alpha=finetune.pick(flag_values.mixup_alpha, mixup))
    registry.require(config.resize_size >= config.image_size,
                     "--resize_size=%d is smaller than the crop --image_size=%d"
                     % (config.resize_size, config.image_size))
    log_schedule(config, flag_values.hyperrule, reference)
    return config

  def preprocessing(self, config):
    resize, crop = config.resize_size, config.image_size
    return ((lambda e: transfer.bit_train(e, resize, crop)),
            (lambda e: transfer.bit_eval(e, crop)))
