"""Model "vit": Vision Transformer fine-tuning from the official .npz weights.

Recipe (vit_jax `configs/common.py`, `configs/vit.py`, `input_pipeline.py`): SGD momentum
0.9, base lr 0.03, cosine decay after a linear warm-up, gradients clipped to global norm
1.0, crop 384, inception crop + flip for training and a plain resize for eval, images in
[-1, 1], softmax cross-entropy. Steps and splits per dataset:

  dataset       train split    eval split    steps   warm-up
  cifar10/100   train[:98%]    test          10,000  500
  image_folder  train          validation    20,000  500   (the imagenet2012 preset)
  tf_flowers    train[:85%]    train[85%:]   500     100   (vit.py defaults; BiT split)

Every value can be overridden by its flag (configure() works the recipe out once). The
Huawei port (ID1217) instead ran 10 steps of Momentum lr 0.001 at batch 4 on top of a GPU
checkpoint, with a sigmoid GELU (models.md §2.7, §2.9); those are not reproduced.
"""
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
DROPOUT_RANGE = registry.within(0, 1, "[)")


@registry.register
class VisionTransformer(finetune.TransferModel):

  name = "vit"
  network_module, model_fn_module, weights_module = network, model_fn_lib, weights
  splits = {dataset: (preset["train_split"], preset["eval_split"])
            for dataset, preset in PRESETS.items()}
  flags = finetune.FINE_TUNING_FLAGS + (
      registry.Flag("vit_model", "enum", "B/16", "ViT variant.", tuple(network.VARIANTS)),
      registry.Flag("vit_dropout", "float", None, "Dropout rate (default: the variant's).",
                    DROPOUT_RANGE),
      registry.Flag("vit_attention_dropout", "float", None, "Attention dropout (default 0).",
                    DROPOUT_RANGE),
      registry.Flag("vit_representation_size", "integer", None,
                    "pre_logits width; default: as the --weights file has it (none without "
                    "a file); 0: no pre_logits layer (dropped if the file has one).",
                    registry.NON_NEGATIVE),
  )

  def recipe(self, flag_values, config):
    """The hyperparameters: flags over the dataset's preset and the variant's defaults."""
    preset = PRESETS[config.dataset]
    variant = network.get_config(flag_values.vit_model)
    representation = flag_values.vit_representation_size
    if representation is None and config.weights:
      representation = weights.representation_size(config.weights)
    config = config.replace(
        variant=flag_values.vit_model,
        image_size=finetune.pick(flag_values.image_size, IMAGE_SIZE),
        dropout_rate=finetune.pick(flag_values.vit_dropout, variant.dropout_rate),
        attention_dropout_rate=finetune.pick(flag_values.vit_attention_dropout, 0.0),
        representation_size=representation or None,
        learning_rate=finetune.pick(flag_values.learning_rate, BASE_LR),
        warmup_steps=finetune.pick(flag_values.warmup_steps, preset["warmup_steps"]),
        train_steps=finetune.train_steps(flag_values, config, preset["train_steps"]),
        grad_clip_norm=finetune.pick(flag_values.grad_clip_norm, GRAD_CLIP_NORM),
        mixup_alpha=finetune.pick(flag_values.mixup_alpha, 0.0))
    registry.require(config.image_size >= variant.patch_size,
                     "--image_size=%d is smaller than the %s patch size %d"
                     % (config.image_size, config.variant, variant.patch_size))
    registry.require(config.warmup_steps < config.train_steps,
                     "--warmup_steps=%d must be smaller than the %d training steps"
                     % (config.warmup_steps, config.train_steps))
    return config

  def preprocessing(self, config):
    size = config.image_size
    return (lambda e: transfer.vit_train(e, size)), (lambda e: transfer.vit_eval(e, size))
