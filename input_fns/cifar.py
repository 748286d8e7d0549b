"""CIFAR-10/100 in the TFDS layout, as tools/build_cifar_tfrecords.py writes it.

    python -m tools.build_cifar_tfrecords --source_dir=cifar-100-python --output_dir=/data/tfds

writes <output_dir>/<cifar10|cifar100>/3.0.2/ (keys `image` = PNG, `label`, `id`) from the
"python version" pickles, examples in the files' order; `dataset` reads it with TFDS split
strings (ViT: `train[:98%]` / `test`).
"""
from input_fns import tfds_layout

VERSION = "3.0.2"
IMAGE_SHAPE = (32, 32, 3)
VARIANTS = ("cifar10", "cifar100")


def dataset(data_dir, variant):
  """The converted `variant` ('cifar10' / 'cifar100') under `data_dir`."""
  if variant not in VARIANTS:
    raise ValueError("unknown CIFAR variant %r; known: %s" % (variant, ", ".join(VARIANTS)))
  return tfds_layout.TfdsDataset(tfds_layout.find_dataset_dir(data_dir, variant, VERSION))
