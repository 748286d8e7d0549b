"""Converts bvlc_alexnet.npy (pickled dict) to a plain .npz without executing the pickle.

  python tools/convert_alexnet_npy.py bvlc_alexnet.npy bvlc_alexnet.npz

The input is read by the restricted unpickler of estimators/masf/weights.py and fully checked
as a MASF run checks it (dtypes, conv1..fc7 against AlexNet at 227x227 with every mismatch
listed at once, no NaN/inf); every layer, fc8 (1000 ImageNet classes) included, is written
as <layer>/weights and <layer>/biases.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from estimators import pretrained  # pylint: disable=g-import-not-at-top
from estimators.masf import network  # pylint: disable=g-import-not-at-top
from estimators.masf import weights as weights_lib  # pylint: disable=g-import-not-at-top


def convert(input_path, output_path, image_size=network.REFERENCE_IMAGE_SIZE,
            fc_units=network.FC_UNITS):
  """Returns the checked source that was written; tests pass a smaller AlexNet."""
  if not output_path.endswith(".npz"):
    raise pretrained.WeightsError("output %s must end in .npz" % output_path)
  source = weights_lib.check(input_path, image_size, fc_units)
  weights_lib.save_npz(output_path, source)
  return source


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("input", help="bvlc_alexnet.npy (caffe-tensorflow layout)")
  parser.add_argument("output", help="destination .npz")
  args = parser.parse_args(argv)
  try:
    source = convert(args.input, args.output)
  except pretrained.WeightsError as e:
    sys.stderr.write("error: %s\n" % e)
    return 1
  layers = sorted(set(weights_lib.layer_of(key) for key in source.shapes))
  total = sum(int(np.prod(shape)) for shape in source.shapes.values())
  print("wrote %s: %s (%d parameters)" % (args.output, ", ".join(layers), total))
  return 0


if __name__ == "__main__":
  sys.exit(main())
