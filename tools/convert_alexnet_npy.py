"""Converts bvlc_alexnet.npy (pickled dict) to a plain .npz without executing the pickle.

  python tools/convert_alexnet_npy.py bvlc_alexnet.npy bvlc_alexnet.npz

The input is read by the restricted unpickler of estimators/masf/weights.py; conv1..fc7 are
checked against AlexNet at 227x227 (every mismatch listed at once); every layer, fc8 (1000
ImageNet classes) included, is written as <layer>/weights and <layer>/biases.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from estimators.masf import network  # pylint: disable=g-import-not-at-top
from estimators.masf import weights as weights_lib  # pylint: disable=g-import-not-at-top


def convert(input_path, output_path, expected_shapes=None):
  """Returns the converted OrderedDict layer -> (weights, biases).

  expected_shapes defaults to AlexNet at 227x227 (tests pass smaller ones).
  """
  if not output_path.endswith(".npz"):
    raise weights_lib.WeightsError("output %s must end in .npz" % output_path)
  layers = weights_lib.read_layers(input_path)
  weights_lib.check_shapes(input_path, layers, expected_shapes or network.weight_shapes(),
                           skip_layers=weights_lib.SKIP_LAYERS)
  weights_lib.save_npz(output_path, layers)
  return layers


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("input", help="bvlc_alexnet.npy (caffe-tensorflow layout)")
  parser.add_argument("output", help="destination .npz")
  args = parser.parse_args(argv)
  try:
    layers = convert(args.input, args.output)
  except weights_lib.WeightsError as e:
    sys.stderr.write("error: %s\n" % e)
    return 1
  total = sum(w.size + b.size for w, b in layers.values())
  print("wrote %s: %s (%d parameters)" % (args.output, ", ".join(layers), total))
  return 0


if __name__ == "__main__":
  sys.exit(main())
