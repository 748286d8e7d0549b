"""Model "vit": Vision Transformer fine-tuning from the official .npz weights.

Recipe (vit_jax `configs/common.py`, `configs/vit.py`, `input_pipeline.py`): SGD momentum
0.9, base lr 0.03, cosine decay after a linear warm-up, gradients clipped to global norm
1.0, crop 384, inception crop + flip for training and a plain resize for eval, images in
[-1, 1], softmax cross-entropy. Steps and splits per dataset:

  dataset       train split    eval split    steps   warm-up
  cifar10/100   train[:98%]    test          10,000  500
  image_folder  train          validation    20,000  500   (the imagenet2012 preset)
  tf_flowers    train[:85%]    train[85%:]   500     100   (vit.py defaults; BiT split)

Every value can be overridden by its flag. The Huawei port (ID1217) instead ran 10 steps
of Momentum lr 0.001 at batch 4 on top of a GPU checkpoint, with a sigmoid GELU
(models.md §2.7, §2.9); those are not reproduced.
"""
from absl import flags

from estimators import finetune
from estimators import registry
from estimators.vit import model_fn as model_fn_lib
from estimators.vit import network
from estimators.vit import weights
from input_fns import tf_flowers
from preprocessing import transfer

IMAGE_SIZE = 384
BASE_LR = 0.03
GRAD_CLIP_NORM = 1.0
PRESETS = {
    "cifar10": dict(train_split="train[:98%]", eval_split="test", train_steps=10000,
                    warmup_steps=500),
    "cifar100": dict(train_split="train[:98%]", eval_split="test", train_steps=10000,
                     warmup_steps=500),
    "image_folder": dict(train_split="train", eval_split="validation", train_steps=20000,
                         warmup_steps=500),
    "tf_flowers": dict(train_split=tf_flowers.TRAIN_SPLIT, eval_split=tf_flowers.EVAL_SPLIT,
                       train_steps=500, warmup_steps=100),
}


@registry.register("vit")
class VisionTransformer(finetune.TransferModel):

  model_fn_module = model_fn_lib
  weights_module = weights

  def build_network(self, images, params):
    network.vit(images, model_fn_lib.network_config(params), params["num_classes"], False)

  def define_flags(self):
    finetune.define_flags()
    flags.DEFINE_enum("vit_model", "B/16", list(network.VARIANTS), "ViT variant.")
    flags.DEFINE_float("vit_dropout", None, "Dropout rate (default: the variant's).")
    flags.DEFINE_float("vit_attention_dropout", None, "Attention dropout (default 0).")
    flags.DEFINE_integer("vit_representation_size", None,
                         "pre_logits width; default: as the --weights file has it (none "
                         "without a file); 0: no pre_logits layer (dropped if the file "
                         "has one).")

  def splits(self, flag_values):
    preset = PRESETS[flag_values.dataset]
    return preset["train_split"], preset["eval_split"]

  def default_train_steps(self, flag_values):
    return PRESETS[flag_values.dataset]["train_steps"]

  def recipe(self, flag_values):
    """All hyperparameters, flags applied over the recipe defaults."""
    preset = PRESETS[flag_values.dataset]
    source = finetune.make_source(flag_values.dataset, flag_values.data_dir)
    variant = network.get_config(flag_values.vit_model)
    representation = flag_values.vit_representation_size
    if representation is None and flag_values.weights:
      representation = weights.representation_size(flag_values.weights)
    return dict(
        variant=flag_values.vit_model,
        num_classes=source.num_classes,
        class_names=source.class_names,  # predictions name their class (None: ids only)
        image_size=finetune.pick(flag_values.image_size, IMAGE_SIZE),
        dropout_rate=finetune.pick(flag_values.vit_dropout, variant.dropout_rate),
        attention_dropout_rate=finetune.pick(flag_values.vit_attention_dropout, 0.0),
        representation_size=representation or None,
        weights=flag_values.weights or None,
        reset_head=flag_values.reset_head,
        learning_rate=finetune.pick(flag_values.learning_rate, BASE_LR),
        warmup_steps=finetune.pick(flag_values.warmup_steps, preset["warmup_steps"]),
        train_steps=self.train_steps(flag_values),
        momentum=flag_values.momentum,
        grad_clip_norm=finetune.pick(flag_values.grad_clip_norm, GRAD_CLIP_NORM),
        mixup_alpha=finetune.pick(flag_values.mixup_alpha, 0.0),
        train_split=preset["train_split"],
        eval_split=preset["eval_split"])

  def preprocessing(self, recipe):
    size = recipe["image_size"]
    return (lambda e: transfer.vit_train(e, size)), (lambda e: transfer.vit_eval(e, size))

  def validate_flags(self, flag_values):
    finetune.check_positive(flag_values, ["image_size", "learning_rate",
                                          "shuffle_buffer", "num_train_examples"])
    finetune.check_non_negative(flag_values, ["momentum", "warmup_steps", "grad_clip_norm",
                                              "mixup_alpha", "vit_representation_size"])
    for name in ("vit_dropout", "vit_attention_dropout"):
      value = getattr(flag_values, name)
      if value is not None and not 0.0 <= value < 1.0:
        raise ValueError("--%s=%r must lie in [0, 1)" % (name, value))
    recipe = self.recipe(flag_values)
    patch = network.get_config(recipe["variant"]).patch_size
    if recipe["image_size"] < patch:
      raise ValueError("--image_size=%d is smaller than the %s patch size %d"
                       % (recipe["image_size"], recipe["variant"], patch))
    if recipe["warmup_steps"] >= recipe["train_steps"]:
      raise ValueError("--warmup_steps=%d must be smaller than the %d training steps"
                       % (recipe["warmup_steps"], recipe["train_steps"]))

