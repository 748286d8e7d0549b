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

from estimators import registry
from estimators.amoeba_net import model_fn as model_fn_lib
from estimators.amoeba_net import network
from input_fns import imagenet
from preprocessing import inception

# The reference scripts' batch sizes and epochs (Huawei test/train_full_1p.sh).
BATCH_SIZE_DEFAULT = 64
TRAIN_EPOCHS_DEFAULT = 35.0
AUX_HEAD_MIN_INPUT = network.AUX_POOL_SIZE
# Decays and smoothing: 1 would freeze the average or flatten the targets.
_FRACTION = registry.within(0, 1, "[)")
_KEEP_PROB = registry.within(0, 1, "(]")


def _min_image_size_for_aux_head(num_cells):
  size = 3
  while network.aux_head_input_size(size, num_cells) < AUX_HEAD_MIN_INPUT:
    size += 1
  return size


def _check_aux_head(image_size, num_cells):
  """The aux head's input (after normal cell reduction_indices[1] - 1) must hold its pool."""
  if network.reduction_indices(num_cells)[1] < 1:
    return  # no normal cell before the second reduction: the aux head is never built
  size = network.aux_head_input_size(image_size, num_cells)
  registry.require(size >= AUX_HEAD_MIN_INPUT,
                   "--image_size=%d leaves a %dx%d map for the aux head, smaller than its "
                   "%dx%d pool: use --image_size >= %d or --use_aux_head=false"
                   % (image_size, size, size, AUX_HEAD_MIN_INPUT, AUX_HEAD_MIN_INPUT,
                      _min_image_size_for_aux_head(num_cells)))


def _check_across_flags(values, run):
  """The checks no single flag's range expresses; `values`: the model's flags."""
  registry.require(not values["use_tpu"],
                   "--use_tpu=true: this port has no TPU path; use --device")
  registry.require(values["reduction_size"] % 8 == 0,
                   "--reduction_size=%d must be a positive multiple of 8 (the stem cells "
                   "use F/4 filters, which factorized reduction halves)"
                   % values["reduction_size"])
  registry.require(values["num_train_images"] >= run.train_batch_size,
                   "--num_train_images=%d is smaller than --train_batch_size=%d (an epoch "
                   "would have 0 steps)" % (values["num_train_images"], run.train_batch_size))
  registry.require(run.eval_steps or values["num_eval_images"] >= run.eval_batch_size,
                   "--num_eval_images=%d is smaller than --eval_batch_size=%d (0 eval steps)"
                   % (values["num_eval_images"], run.eval_batch_size))
  if values["use_aux_head"]:
    _check_aux_head(values["image_size"], values["num_cells"])
  registry.require(values["use_synthetic_data"] or run.data_dir,
                   "--data_dir is required (or --use_synthetic_data)")


@registry.register
class AmoebaNet(registry.Model):
  """AmoebaNet-D; see the package docstring for the deviations from the reference flags."""

  name = "amoeba_net"
  flags = (
      registry.Flag("use_tpu", "bool", False, "Accepted for compatibility with the "
                    "reference scripts; must be False (there is no TPU path)."),
      registry.Flag("num_cells", "integer", 6, "Total normal cells over the three stacks "
                    "(DAWNBench N6).", registry.at_least(1)),
      registry.Flag("reduction_size", "integer", 256, "Filters F of the first stack (a "
                    "multiple of 8).", registry.at_least(8)),
      registry.Flag("stem_reduction_size", "integer", 32, "Filters of the 3x3/2 stem "
                    "convolution.", registry.at_least(1)),
      registry.Flag("image_size", "integer", 224, "Input height and width (at least the "
                    "3x3 stem).", registry.at_least(3)),
      registry.Flag("num_label_classes", "integer", 1001, "Classes (ImageNet: 1000 + "
                    "background 0).", registry.at_least(2)),
      registry.Flag("num_epochs_per_eval", "float", 1.0, "train_and_eval: epochs between "
                    "evaluations (unless --steps_per_eval).", registry.POSITIVE),
      registry.Flag("num_train_images", "integer", 1281167, "Images in the training split.",
                    registry.at_least(1)),
      registry.Flag("num_eval_images", "integer", 50000, "Images in the evaluation split.",
                    registry.at_least(1)),
      registry.Flag("lr", "float", 2.56, "Peak learning rate.", registry.POSITIVE),
      registry.Flag("lr_decay_value", "float", 0.88, "Exponential decay factor per decay "
                    "period.", registry.POSITIVE),
      registry.Flag("lr_decay_method", "enum", "exponential", "exponential (staircase, "
                    "with warm-up), cosine, constant or stepwise (x0.1 after epochs 10 and "
                    "20); all floored at 1e-4*lr.", model_fn_lib.LR_DECAY_METHODS),
      registry.Flag("lr_num_epochs_per_decay", "float", 1.0, "Epochs per exponential decay "
                    "step.", registry.POSITIVE),
      registry.Flag("lr_warmup_epochs", "float", 0.35, "Linear warm-up from 0 (exponential "
                    "method only, as the reference).", registry.NON_NEGATIVE),
      registry.Flag("optimizer", "enum", "rmsprop", "sgd, momentum or rmsprop (decay 0.9, "
                    "momentum 0.9, epsilon 1.0).", model_fn_lib.OPTIMIZERS),
      registry.Flag("momentum_rate", "float", 0.9, "Momentum of --optimizer=momentum.",
                    registry.NON_NEGATIVE),
      registry.Flag("use_nesterov", "bool", False, "Nesterov momentum for "
                    "--optimizer=momentum."),
      registry.Flag("weight_decay", "float", 4e-5, "L2 factor on conv and FC kernels.",
                    registry.NON_NEGATIVE),
      registry.Flag("moving_average_decay", "float", 0.9999, "EMA decay of the weights "
                    "used for eval/export; 0 disables the EMA.", _FRACTION),
      registry.Flag("label_smoothing", "float", 0.1, "Label smoothing of the "
                    "cross-entropy.", _FRACTION),
      registry.Flag("use_aux_head", "bool", True, "Auxiliary head (training graph; loss "
                    "weight 0.4)."),
      # int(128 * aux_scaling) filters: below 1/128 the aux head would have none.
      registry.Flag("aux_scaling", "float", 0.4, "Width multiplier of the aux head (128 "
                    "and 768 filters).", registry.at_least(1.0 / 128)),
      registry.Flag("dense_dropout_keep_prob", "float", 0.5, "Keep probability of the head "
                    "dropout.", _KEEP_PROB),
      registry.Flag("drop_connect_keep_prob", "float", 1.0, "Drop-path keep probability "
                    "reached at the end of training (1.0 = off).", _KEEP_PROB),
      registry.Flag("batch_norm_decay", "float", 0.9, "Decay of the BN moving statistics.",
                    _FRACTION),
      registry.Flag("batch_norm_epsilon", "float", 1e-5, "BN epsilon.", registry.POSITIVE),
      registry.Flag("gradient_clipping_by_global_norm", "float", 0.0, "Clip norm; 0 = no "
                    "clipping.", registry.NON_NEGATIVE),
      registry.Flag("use_fast_color_distort", "bool", True, "Training colour distortion: "
                    "brightness + Cb/Cr offsets (else the classic one)."),
      registry.Flag("cb_distortion_range", "float", 0.1, "Range of the random Cb offset.",
                    registry.NON_NEGATIVE),
      registry.Flag("cr_distortion_range", "float", 0.1, "Range of the random Cr offset.",
                    registry.NON_NEGATIVE),
      registry.Flag("use_synthetic_data", "bool", False, "Random images instead of "
                    "--data_dir (measures the model, not the input)."),
  )
  run_flag_defaults = {"train_batch_size": BATCH_SIZE_DEFAULT,
                       "eval_batch_size": BATCH_SIZE_DEFAULT,
                       "train_epochs": TRAIN_EPOCHS_DEFAULT}
  run_flag_aliases = {"num_epochs": "train_epochs"}

  def configure(self, flag_values, run):
    """The model's flags (the network's and model_fn's fields) plus the step counts,
    num_epochs (the cosine schedule's length) and class_names (labels.txt's; None with
    synthetic data or without the file)."""
    values = registry.values_of(self.flags, flag_values)
    _check_across_flags(values, run)
    # Whole steps, as the reference's per-epoch loop counts.
    steps_per_epoch = int(math.ceil(values["num_train_images"] / float(run.train_batch_size)))
    return run.replace(
        num_epochs=flag_values.train_epochs,
        train_steps=registry.train_steps(
            flag_values, lambda: steps_per_epoch,
            registry.ceil_steps(TRAIN_EPOCHS_DEFAULT * steps_per_epoch)),
        steps_per_eval=run.steps_per_eval or max(
            1, int(values["num_epochs_per_eval"] * steps_per_epoch)),
        # Full batches only, as the reference evaluates.
        eval_steps=run.eval_steps or values["num_eval_images"] // run.eval_batch_size,
        class_names=None if values["use_synthetic_data"] else imagenet.class_name_table(
            run.data_dir, values["num_label_classes"]),
        **values)

  def check_inputs(self, config):
    if config.use_synthetic_data:
      return
    if config.mode in ("train", "train_and_eval"):
      imagenet.check_record_counts(config.data_dir, is_training=True)
    if config.mode != "train":
      imagenet.check_record_counts(config.data_dir, is_training=False)
    imagenet.check_label_file(config.data_dir, config.num_label_classes)

  def input_fn(self, config, mode):
    return imagenet.build_input_fn(
        config.data_dir, mode == tf.estimator.ModeKeys.TRAIN, config.image_size,
        num_label_classes=config.num_label_classes,
        use_fast_color_distort=config.use_fast_color_distort,
        cb_distortion_range=config.cb_distortion_range,
        cr_distortion_range=config.cr_distortion_range,
        synthetic=config.use_synthetic_data,
        seed=config.tf_random_seed,
        # None: imagenet's own choice (evaluation full batches, prediction every record).
        drop_remainder=True if config.fixed_batch_shapes else None,
        predict=mode == tf.estimator.ModeKeys.PREDICT)

  def model_fn(self, features, labels, mode, config):
    return model_fn_lib.model_fn(features, labels, mode, config)

  def serving_input_receiver_fn(self, config):
    """Serving input: a batch of encoded JPEG/PNG strings, eval-preprocessed."""
    image_size = config.image_size

    def serving_input_receiver_fn():
      encoded = tf.placeholder(tf.string, [None], name="image_bytes")
      images = tf.map_fn(
          lambda image_bytes: inception.preprocess_image(image_bytes, False, image_size),
          encoded, dtype=tf.float32, back_prop=False)
      return tf.estimator.export.ServingInputReceiver({model_fn_lib.IMAGE_KEY: images},
                                                      {"image_bytes": encoded})

    return serving_input_receiver_fn

  def summarize(self, results, config):
    if "top_1_accuracy" not in results:
      return None
    # With 5 classes or fewer the top-5 accuracy is 100 % whatever the model does.
    top_5 = (", top-5 %.2f%%" % (100 * results["top_5_accuracy"])
             if config.num_label_classes > 5 else "")
    return ("AmoebaNet-D eval at global step %d: top-1 %.2f%%%s accuracy on the validation "
            "split (%s), loss %.4f (cross-entropy with label smoothing)"
            % (results["global_step"], 100 * results["top_1_accuracy"], top_5,
               "EMA weights" if config.moving_average_decay > 0 else "raw weights",
               results["loss"]))
