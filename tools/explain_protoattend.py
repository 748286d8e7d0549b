"""Render ProtoAttend explanations: each input beside its top prototypes (PNG grid).

Row i: the input image (with its true label when known), then its top-k prototypes from
the candidate database, each captioned with its attention weight and class. The images
are shown raw (before standardisation), scaled up by `scale` with nearest neighbour.

  python -m tools.explain_protoattend --model_dir=RUN --output=explain.png \
      --test_indices=0,1,2,3 [--top_k_prototypes=5] [the model flags used for training]

The architecture flags (--resnet_depth, --attention_dim, ...) must match the checkpoint's;
the candidate database is the fixed evaluation database (--eval_cand_size,
--eval_cand_seed) taken from the training set.
"""
import os
import sys

import numpy as np
import tensorflow.compat.v1 as tf

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from estimators.protoattend import model_fn as model_fn_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from input_fns import fashion_mnist  # pylint: disable=g-import-not-at-top,wrong-import-position
from preprocessing import pad_crop_flip  # pylint: disable=g-import-not-at-top,wrong-import-position

CAPTION_HEIGHT = 24
MARGIN = 4
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def grid_size(num_images, top_k, scale, image_size=fashion_mnist.IMAGE_SIZE):
  """(width, height) in pixels of the PNG for num_images rows of 1 + top_k cells."""
  cell_w = image_size * scale
  cell_h = image_size * scale + CAPTION_HEIGHT
  return ((1 + top_k) * (cell_w + MARGIN) + MARGIN,
          num_images * (cell_h + MARGIN) + MARGIN)


def check_model_dir(model_dir):
  """Raises ValueError naming model_dir unless it is a folder holding a checkpoint."""
  if not tf.gfile.IsDirectory(model_dir):
    raise ValueError("--model_dir=%s: no such folder" % model_dir)
  if tf.train.latest_checkpoint(model_dir) is None:
    raise ValueError("--model_dir=%s holds no checkpoint to explain (train first)"
                     % model_dir)


def predict_prototypes(model_dir, images, cand_images, cand_labels, cand_ids, params):
  """Runs the checkpoint in model_dir on uint8 images [n,28,28] against the candidates.

  Returns the prediction dict of numpy arrays (class, confidence, prototype_ids,
  prototype_weights, prototype_labels, ...), one row per image.
  """
  check_model_dir(model_dir)
  images = np.asarray(images, np.uint8)
  if images.ndim != 3 or images.shape[1:] != (fashion_mnist.IMAGE_SIZE,) * 2:
    raise ValueError("images must be uint8 [n, %d, %d], got shape %s"
                     % (fashion_mnist.IMAGE_SIZE, fashion_mnist.IMAGE_SIZE, images.shape))

  def input_fn(params):
    del params
    features = {
        "image": pad_crop_flip.eval_preprocess(tf.constant(images[..., None])),
        "cand_image": pad_crop_flip.eval_preprocess(
            tf.constant(np.asarray(cand_images, np.uint8)[..., None])),
        "cand_label": tf.constant(np.asarray(cand_labels, np.int32)),
        "cand_id": tf.constant(np.asarray(cand_ids, np.int32)),
    }
    return tf.data.Dataset.from_tensors(features)

  def model_fn(features, labels, mode, params):
    return model_fn_lib.model_fn(features, labels, mode, params)

  estimator = tf.estimator.Estimator(
      model_fn, model_dir=model_dir, params=dict(params, batch_size=len(images)))
  return next(estimator.predict(input_fn, yield_single_examples=False))


def render_grid(images, predictions, cand_lookup, output_path, labels=None, scale=3,
                class_names=fashion_mnist.CLASS_NAMES):
  """Draws the grid PNG. cand_lookup maps a prototype id to its uint8 [28,28] image."""
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  top_k = predictions["prototype_ids"].shape[1]
  size = fashion_mnist.IMAGE_SIZE * scale
  width, height = grid_size(len(images), top_k, scale)
  canvas = Image.new("RGB", (width, height), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()

  def cell(row, col, image, caption):
    x = MARGIN + col * (size + MARGIN)
    y = MARGIN + row * (size + CAPTION_HEIGHT + MARGIN)
    tile = Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.NEAREST)
    canvas.paste(tile.convert("RGB"), (x, y))
    for line, text in enumerate(caption):
      draw.text((x, y + size + 1 + 11 * line), text, fill=TEXT, font=font)

  for row, image in enumerate(images):
    predicted = class_names[predictions["class"][row]]
    first = "pred %s" % predicted[:9]
    second = "conf %.2f" % predictions["confidence"][row]
    if labels is not None:
      second += " y=%d" % labels[row]
    cell(row, 0, image, [first, second])
    for k in range(top_k):
      proto_id = int(predictions["prototype_ids"][row, k])
      weight = float(predictions["prototype_weights"][row, k])
      label = class_names[predictions["prototype_labels"][row, k]]
      cell(row, 1 + k, cand_lookup[proto_id], ["w=%.3f #%d" % (weight, proto_id), label[:12]])
  canvas.save(output_path, format="PNG")
  return output_path


def explain(model_dir, images, output_path, params, train_images, train_labels,
            cand_ids=None, labels=None, scale=3):
  """Explains uint8 images [n,28,28] with the checkpoint in model_dir; writes a PNG.

  Candidates are train_images[cand_ids] (default: the fixed evaluation database for
  params['eval_cand_size'] and params['eval_cand_seed']). Returns the predictions.
  """
  if cand_ids is None:
    cand_ids = fashion_mnist.fixed_candidate_ids(
        params["eval_cand_size"], params.get("eval_cand_seed", 1), len(train_images))
  cand_ids = np.asarray(cand_ids, np.int32)
  predictions = predict_prototypes(model_dir, images, train_images[cand_ids],
                                   train_labels[cand_ids], cand_ids, params)
  render_grid(images, predictions, train_images, output_path, labels=labels, scale=scale)
  return predictions


def parse_test_indices(text, num_test_images):
  """--test_indices "0,1,2" -> [0, 1, 2]; raises ValueError naming the flag when bad."""
  try:
    indices = [int(i) for i in text.split(",") if i.strip()]
  except ValueError:
    raise ValueError("--test_indices=%s: expected comma-separated integers" % text)
  bad = [i for i in indices if not 0 <= i < num_test_images]
  if bad:
    raise ValueError("--test_indices: %s outside [0, %d)" % (bad, num_test_images))
  return indices


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from estimators import protoattend  # pylint: disable=g-import-not-at-top
  from estimators import registry  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  try:  # bad input: one line naming the flag or file, before any graph is built
    check_model_dir(fv.model_dir)
    registry.check_ranges(protoattend.MODEL_FLAGS, fv)
    params = protoattend.model_values(fv)  # the model's flags as its model_fn reads them
    data_dir = protoattend.resolve_data_dir(fv.data_dir)
    train_images, train_labels = fashion_mnist.load_split(data_dir, "train")
    test_images, test_labels = fashion_mnist.load_split(data_dir, "test")
    indices = parse_test_indices(fv.test_indices, len(test_images))
    cand_ids = fashion_mnist.fixed_candidate_ids(
        params["eval_cand_size"], params["eval_cand_seed"], len(train_images))
  except ValueError as e:  # fashion_mnist.IdxError is one
    raise SystemExit("error: %s" % e)
  predictions = explain(fv.model_dir, test_images[indices], fv.output, params,
                        train_images, train_labels, cand_ids=cand_ids,
                        labels=test_labels[indices], scale=fv.scale)
  for row, index in enumerate(indices):
    print("test #%d: label %d, predicted %d (confidence %.3f), prototypes %s weights [%s]"
          % (index, test_labels[index], predictions["class"][row],
             predictions["confidence"][row], predictions["prototype_ids"][row].tolist(),
             ", ".join("%.3f" % w for w in predictions["prototype_weights"][row])))
  print("wrote", fv.output)


def _define_cli_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from estimators import protoattend  # pylint: disable=g-import-not-at-top
  from estimators import registry  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model_dir", None, "Run directory holding the checkpoint.")
  flags.DEFINE_string("data_dir", "", "Fashion-MNIST IDX folder, or a folder holding "
                      "fashion_mnist/ (default: the data root's: $DATA_ROOT, else "
                      "../shared/data).")
  flags.DEFINE_string("output", "protoattend_explanations.png", "PNG to write.")
  flags.DEFINE_string("test_indices", "0,1,2,3", "Comma-separated test-set indices.")
  flags.DEFINE_integer("scale", 3, "Pixel magnification.")
  flags.mark_flag_as_required("model_dir")
  registry.define_flags(protoattend.MODEL_FLAGS)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_cli_flags()
  app.run(main)
