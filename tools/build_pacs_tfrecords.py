"""Builds MASF's PACS tfrecords from the official release (its kfold/ images, splits/ lists).

    python -m tools.build_pacs_tfrecords --dataroot=<pacs> --output_dir=<dir> [--skip_bad_lines]

writes <dir>/pacs_<domain>_<split>.tfrecord (0-based labels, the original image bytes) and
<dir>/pacs_summary.json, which records each file's examples ("counts") and size ("bytes");
`masf.py --data_dir=<dir>` reads them (input_fns/pacs.py). Every list line is checked as the
run checks it, and every listed image is decoded once with PIL to prove it readable, before
anything is written: by default all problems are reported together (exit status 1); with
--skip_bad_lines they are dropped, counted and recorded in the summary's "skipped_lines".
"""
import argparse
import io
import json
import logging
import os
import sys

import tensorflow.compat.v1 as tf

from input_fns import pacs

_log = logging.getLogger(__name__)


def _decode_with_pil(path):
  """Returns (encoded bytes, height, width, format) or raises with the reason."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (builder-only dependency)
  with open(path, "rb") as f:
    encoded = f.read()
  with Image.open(io.BytesIO(encoded)) as image:
    image.load()
    if image.format not in ("JPEG", "PNG"):
      raise ValueError("format %s is neither JPEG nor PNG" % image.format)
    return encoded, image.size[1], image.size[0], image.format.lower()


def _bytes_feature(value):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def _example(encoded, height, width, image_format, label, relpath, domain):
  return tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": _bytes_feature(encoded),
      "image/format": _bytes_feature(image_format.encode()),
      "image/height": _int_feature(height),
      "image/width": _int_feature(width),
      "image/class/label": _int_feature(label),
      "image/class/text": _bytes_feature(pacs.CLASS_NAMES[label].encode()),
      "image/domain": _bytes_feature(domain.encode()),
      "image/filename": _bytes_feature(relpath.encode()),
  }))


def _read_release(dataroot, domains, splits, max_per_list):
  """Parses every list and decodes each listed image once; returns (plans: (domain, split,
  good entries) per list, problems, decoded: image path -> what _decode_with_pil gave, or
  the reason it failed)."""
  plans, problems, decoded = [], [], {}
  for domain in domains:
    for split in splits:
      entries, list_problems = pacs.parse_split_list(
          pacs.split_list_path(dataroot, domain, split), domain)
      problems.extend(list_problems)
      good = []
      for entry in entries:
        if max_per_list is not None and len(good) >= max_per_list:
          break
        path = pacs.image_path(dataroot, entry.relpath)
        if path not in decoded:
          try:
            decoded[path] = _decode_with_pil(path)
          except (IOError, OSError, ValueError) as e:
            decoded[path] = "%s: %s" % (type(e).__name__, e)
        if isinstance(decoded[path], str):
          problems.append("%s:%d: image %s is missing or unreadable (%s)"
                          % (entry.list_file, entry.line, path, decoded[path]))
        else:
          good.append(entry)
      plans.append((domain, split, good))
  return plans, problems, decoded


def build_tfrecords(dataroot, output_dir, domains=pacs.DOMAINS, splits=pacs.SPLITS,
                    skip_bad_lines=False, max_per_list=None):
  """Writes pacs_<domain>_<split>.tfrecord (0-based labels) and pacs_summary.json.

  All lists are validated and every image decoded (once per path) before anything is
  written, so a bad release fails fast (pacs.PacsDataError) with every problem listed.
  max_per_list keeps the first N good lines of each list (tests). Returns the summary dict.
  """
  for domain in domains:
    for split in splits:
      pacs.check_domain_split(domain, split)
  plans, problems, decoded = _read_release(dataroot, domains, splits, max_per_list)
  pacs.resolve_problems(problems, skip_bad_lines, "bad line(s) in the PACS lists under %s"
                        % os.path.join(dataroot, "splits"))

  tf.io.gfile.makedirs(output_dir)
  counts, sizes = {}, {}
  for domain, split, entries in plans:
    out = pacs.tfrecord_path(output_dir, domain, split)
    with tf.io.TFRecordWriter(out) as writer:
      for entry in entries:
        encoded, height, width, image_format = decoded[
            pacs.image_path(dataroot, entry.relpath)]
        writer.write(_example(encoded, height, width, image_format, entry.label,
                              entry.relpath, domain).SerializeToString())
    counts["%s_%s" % (domain, split)] = len(entries)
    sizes["%s_%s" % (domain, split)] = os.path.getsize(out)
    _log.info("wrote %d examples to %s", len(entries), out)
  summary = {"dataroot": os.path.abspath(dataroot), "class_names": list(pacs.CLASS_NAMES),
             "label_base": 0, "counts": counts, "bytes": sizes, "skipped_lines": problems}
  with open(os.path.join(output_dir, pacs.SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataroot", default=pacs.default_dataroot(),
                      help="PACS root holding kfold/ and splits/ (default: %(default)s)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--domains", default=",".join(pacs.DOMAINS))
  parser.add_argument("--splits", default=",".join(pacs.SPLITS))
  parser.add_argument("--skip_bad_lines", action="store_true",
                      help="drop (and count) bad list lines instead of failing")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    summary = build_tfrecords(args.dataroot, args.output_dir,
                              domains=[d for d in args.domains.split(",") if d],
                              splits=[s for s in args.splits.split(",") if s],
                              skip_bad_lines=args.skip_bad_lines)
  except pacs.PacsDataError as e:
    sys.stderr.write("error: %s\n" % e)
    return 1
  print("wrote %d tfrecord files to %s (%d images, %d bad lines skipped)"
        % (len(summary["counts"]), args.output_dir, sum(summary["counts"].values()),
           len(summary["skipped_lines"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
