"""AmoebaNet-D on ImageNet (tensorflow/tpu models/official/amoeba_net; Huawei ID2073 flags).

Flag defaults are the Huawei port's (= the DAWNBench N6F256 224-px recipe), except:
- --optimizer defaults to rmsprop, the tensorflow/tpu default and the optimizer the
  DAWNBench command (lr 2.56, global batch 1024) ran with. The Huawei port switched to
  plain SGD (--optimizer=sgd reproduces it) while keeping lr=2.56 at batch 64.
- --use_nesterov defaults to False: the reference hparams declare use_nesterov=1, but its
  momentum branch never passes it on, so False reproduces the reference's behaviour.
- Drop-path (--drop_connect_keep_prob < 1) spans the run's training steps (--train_steps,
  else from --num_epochs); the reference derives it from num_epochs.
- --num_epochs is the seed's name of the run loop's --train_epochs (default 35 here);
  an epoch is ceil(num_train_images / train_batch_size) steps, as in the reference's
  per-epoch loop (35 epochs at batch 64 = the Huawei run's 700,665 steps).
"""
import math

import tensorflow.compat.v1 as tf
from absl import flags

from estimators import registry
from estimators.amoeba_net import model_fn as model_fn_lib
from estimators.amoeba_net import network

FLAG_SPECS = (
    # name, kind, default, help
    ("use_tpu", "bool", False, "Accepted for compatibility with the reference scripts; "
     "must be False (there is no TPU path)."),
    ("num_cells", "integer", 6, "Total normal cells over the three stacks (DAWNBench N6)."),
    ("reduction_size", "integer", 256, "Filters F of the first stack (a multiple of 8)."),
    ("stem_reduction_size", "integer", 32, "Filters of the 3x3/2 stem convolution."),
    ("image_size", "integer", 224, "Input height and width."),
    ("num_label_classes", "integer", 1001, "Classes (ImageNet: 1000 + background 0)."),
    ("num_epochs_per_eval", "float", 1.0,
     "train_and_eval: epochs between evaluations (unless --steps_per_eval)."),
    ("num_train_images", "integer", 1281167, "Images in the training split."),
    ("num_eval_images", "integer", 50000, "Images in the evaluation split."),
    ("lr", "float", 2.56, "Peak learning rate."),
    ("lr_decay_value", "float", 0.88, "Exponential decay factor per decay period."),
    ("lr_decay_method", "enum", "exponential", "exponential (staircase, with warm-up), "
     "cosine, constant or stepwise (x0.1 after epochs 10 and 20); all floored at 1e-4*lr."),
    ("lr_num_epochs_per_decay", "float", 1.0, "Epochs per exponential decay step."),
    ("lr_warmup_epochs", "float", 0.35,
     "Linear warm-up from 0 (exponential method only, as the reference)."),
    ("optimizer", "enum", "rmsprop",
     "sgd, momentum or rmsprop (decay 0.9, momentum 0.9, epsilon 1.0)."),
    ("momentum_rate", "float", 0.9, "Momentum of --optimizer=momentum."),
    ("use_nesterov", "bool", False, "Nesterov momentum for --optimizer=momentum."),
    ("weight_decay", "float", 4e-5, "L2 factor on conv and FC kernels."),
    ("moving_average_decay", "float", 0.9999,
     "EMA decay of the weights used for eval/export; 0 disables the EMA."),
    ("label_smoothing", "float", 0.1, "Label smoothing of the cross-entropy."),
    ("use_aux_head", "bool", True, "Auxiliary head (training graph; loss weight 0.4)."),
    ("aux_scaling", "float", 0.4, "Width multiplier of the aux head (128 and 768 filters)."),
    ("dense_dropout_keep_prob", "float", 0.5, "Keep probability of the head dropout."),
    ("drop_connect_keep_prob", "float", 1.0,
     "Drop-path keep probability reached at the end of training (1.0 = off)."),
    ("batch_norm_decay", "float", 0.9, "Decay of the BN moving statistics."),
    ("batch_norm_epsilon", "float", 1e-5, "BN epsilon."),
    ("gradient_clipping_by_global_norm", "float", 0.0, "Clip norm; 0 = no clipping."),
    ("use_fast_color_distort", "bool", True,
     "Training colour distortion: brightness + Cb/Cr offsets (else the classic one)."),
    ("cb_distortion_range", "float", 0.1, "Range of the random Cb offset."),
    ("cr_distortion_range", "float", 0.1, "Range of the random Cr offset."),
    ("use_synthetic_data", "bool", False,
     "Random images instead of --data_dir (measures the model, not the input)."),
)
ENUM_VALUES = {
    "lr_decay_method": model_fn_lib.LR_DECAY_METHODS,
    "optimizer": model_fn_lib.OPTIMIZERS,
}
# The reference scripts' batch sizes and epochs (Huawei test/train_full_1p.sh).
BATCH_SIZE_DEFAULT = 64
TRAIN_EPOCHS_DEFAULT = 35.0
AUX_HEAD_MIN_INPUT = network.AUX_POOL_SIZE


def define_amoeba_flags(flag_values=flags.FLAGS):
  for name, kind, default, help_text in FLAG_SPECS:
    if kind == "enum":
      flags.DEFINE_enum(name, default, ENUM_VALUES[name], help_text, flag_values=flag_values)
    else:
      getattr(flags, "DEFINE_" + kind)(name, default, help_text, flag_values=flag_values)
  for name in ("train_batch_size", "eval_batch_size"):
    if name in flag_values:
      flag_values.set_default(name, BATCH_SIZE_DEFAULT)
  if "train_epochs" in flag_values:
    flag_values.set_default("train_epochs", TRAIN_EPOCHS_DEFAULT)
    if "num_epochs" not in flag_values:
      flags.DEFINE_alias("num_epochs", "train_epochs", flag_values=flag_values)


def _min_image_size_for_aux_head(num_cells):
  size = 3
  while network.aux_head_input_size(size, num_cells) < AUX_HEAD_MIN_INPUT:
    size += 1
  return size


def _check(condition, message):
  if not condition:
    raise ValueError(message)


@registry.register("amoeba_net")
class AmoebaNet(registry.Model):
  """AmoebaNet-D; see the package docstring for the deviations from the reference flags."""

  def define_flags(self):
    define_amoeba_flags()

  def params(self, flag_values):
    from input_fns import imagenet  # pylint: disable=g-import-not-at-top
    values = {name: getattr(flag_values, name) for name, _, _, _ in FLAG_SPECS}
    values.update(train_batch_size=flag_values.train_batch_size,
                  num_epochs=flag_values.train_epochs,
                  total_train_steps=self.train_steps(flag_values),
                  # names of the predicted classes (labels.txt; None: class ids only)
                  class_names=None if flag_values.use_synthetic_data else
                  imagenet.class_name_table(flag_values.data_dir,
                                            flag_values.num_label_classes))
    return values

  def model_fn(self, features, labels, mode, params):
    return model_fn_lib.model_fn(features, labels, mode, params)

  def input_fn(self, flag_values, mode):
    from input_fns import imagenet  # pylint: disable=g-import-not-at-top
    return imagenet.build_input_fn(
        flag_values.data_dir, mode == tf.estimator.ModeKeys.TRAIN, flag_values.image_size,
        num_label_classes=flag_values.num_label_classes,
        use_fast_color_distort=flag_values.use_fast_color_distort,
        cb_distortion_range=flag_values.cb_distortion_range,
        cr_distortion_range=flag_values.cr_distortion_range,
        synthetic=flag_values.use_synthetic_data,
        seed=flag_values.tf_random_seed,
        predict=mode == tf.estimator.ModeKeys.PREDICT)

  def train_examples(self, flag_values):
    return flag_values.num_train_images

  def steps_per_epoch(self, flag_values):
    """ceil(num_train_images / train_batch_size): whole steps, as the reference counts."""
    return int(math.ceil(self.train_examples(flag_values) /
                         float(flag_values.train_batch_size)))

  def steps_per_eval(self, flag_values):
    return flag_values.steps_per_eval or max(
        1, int(flag_values.num_epochs_per_eval * self.steps_per_epoch(flag_values)))

  def eval_steps(self, flag_values):
    """--eval_steps, else num_eval_images // eval_batch_size (full batches only)."""
    return flag_values.eval_steps or flag_values.num_eval_images // flag_values.eval_batch_size

  def serving_input_receiver_fn(self, flag_values):
    """Serving input: a batch of encoded JPEG/PNG strings, eval-preprocessed."""
    image_size = flag_values.image_size

    def serving_input_receiver_fn():
      from preprocessing import inception  # pylint: disable=g-import-not-at-top
      encoded = tf.placeholder(tf.string, [None], name="image_bytes")
      images = tf.map_fn(
          lambda image_bytes: inception.preprocess_image(image_bytes, False, image_size),
          encoded, dtype=tf.float32, back_prop=False)
      return tf.estimator.export.ServingInputReceiver({model_fn_lib.IMAGE_KEY: images},
                                                      {"image_bytes": encoded})

    return serving_input_receiver_fn

  def validate_flags(self, flag_values):
    f = flag_values
    _check(not f.use_tpu, "--use_tpu=true: this port has no TPU path; use --device")
    for name in ("num_cells", "stem_reduction_size", "image_size", "num_train_images",
                 "num_eval_images"):
      _check(getattr(f, name) >= 1, "--%s=%d must be >= 1" % (name, getattr(f, name)))
    _check(f.reduction_size >= 8 and f.reduction_size % 8 == 0,
           "--reduction_size=%d must be a positive multiple of 8 (the stem cells use F/4 "
           "filters, which factorized reduction halves)" % f.reduction_size)
    _check(f.image_size >= 3, "--image_size=%d is smaller than the 3x3 stem" % f.image_size)
    _check(f.num_label_classes >= 2, "--num_label_classes=%d must be >= 2"
           % f.num_label_classes)
    _check(f.num_train_images >= f.train_batch_size,
           "--num_train_images=%d is smaller than --train_batch_size=%d (an epoch would have "
           "0 steps)" % (f.num_train_images, f.train_batch_size))
    _check(f.eval_steps or f.num_eval_images >= f.eval_batch_size,
           "--num_eval_images=%d is smaller than --eval_batch_size=%d (0 eval steps)"
           % (f.num_eval_images, f.eval_batch_size))
    for name in ("num_epochs_per_eval", "lr", "lr_decay_value",
                 "lr_num_epochs_per_decay", "batch_norm_epsilon", "aux_scaling"):
      _check(getattr(f, name) > 0, "--%s=%r must be > 0" % (name, getattr(f, name)))
    for name in ("lr_warmup_epochs", "weight_decay", "gradient_clipping_by_global_norm",
                 "momentum_rate", "cb_distortion_range", "cr_distortion_range"):
      _check(getattr(f, name) >= 0, "--%s=%r must be >= 0" % (name, getattr(f, name)))
    for name in ("label_smoothing", "moving_average_decay", "batch_norm_decay"):
      _check(0 <= getattr(f, name) < 1, "--%s=%r must be in [0, 1)" % (name, getattr(f, name)))
    for name in ("dense_dropout_keep_prob", "drop_connect_keep_prob"):
      _check(0 < getattr(f, name) <= 1, "--%s=%r must be in (0, 1]" % (name, getattr(f, name)))
    _check(int(128 * f.aux_scaling) >= 1, "--aux_scaling=%r gives an aux head with 0 filters"
           % f.aux_scaling)
    if f.use_aux_head and network.reduction_indices(f.num_cells)[1] >= 1:
      size = network.aux_head_input_size(f.image_size, f.num_cells)
      _check(size >= AUX_HEAD_MIN_INPUT,
             "--image_size=%d leaves a %dx%d map for the aux head, smaller than its %dx%d "
             "pool: use --image_size >= %d or --use_aux_head=false"
             % (f.image_size, size, size, AUX_HEAD_MIN_INPUT, AUX_HEAD_MIN_INPUT,
                _min_image_size_for_aux_head(f.num_cells)))
    _check(f.use_synthetic_data or f.data_dir,
           "--data_dir is required (or --use_synthetic_data)")

  def check_inputs(self, flag_values):
    if flag_values.use_synthetic_data:
      return
    from input_fns import imagenet  # pylint: disable=g-import-not-at-top
    if flag_values.mode in ("train", "train_and_eval"):
      imagenet.check_record_counts(flag_values.data_dir, is_training=True)
    if flag_values.mode != "train":
      imagenet.check_record_counts(flag_values.data_dir, is_training=False)
    imagenet.check_label_file(flag_values.data_dir, flag_values.num_label_classes)

  def summarize(self, results, flag_values):
    if "top_1_accuracy" not in results:
      return None
    # With 5 classes or fewer the top-5 accuracy is 100 % whatever the model does.
    top_5 = (", top-5 %.2f%%" % (100 * results["top_5_accuracy"])
             if flag_values.num_label_classes > 5 else "")
    return ("AmoebaNet-D eval at global step %d: top-1 %.2f%%%s accuracy on the validation "
            "split (%s), loss %.4f (cross-entropy with label smoothing)"
            % (results["global_step"], 100 * results["top_1_accuracy"], top_5,
               "EMA weights" if flag_values.moving_average_decay > 0 else "raw weights",
               results["loss"]))
