"""Builds ProtoAttend's Fashion-MNIST TFRecords from the four official IDX .gz files.

    python -m tools.build_fashion_mnist_tfrecords IDX_DIR OUTPUT_DIR

writes OUTPUT_DIR/{train,test,ood_digits}.tfrecord and manifest.json, which
`protoattend.py --data_dir=OUTPUT_DIR` reads as they are. A run given the IDX folder itself
builds the same files into its cache (input_fns.fashion_mnist.ensure_tfrecords); this
command builds them ahead of time. Prints each file written.
"""
import argparse
import os

from input_fns import fashion_mnist


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("idx_dir", metavar="IDX_DIR", help="folder of the IDX .gz files")
  parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to write")
  args = parser.parse_args(argv)
  out = fashion_mnist.build_tfrecords(args.idx_dir, args.output_dir)
  print("wrote", ", ".join(os.path.join(out, f) for f in sorted(os.listdir(out))))


if __name__ == "__main__":
  main()
