"""python -m migration.convert -i SRC [-o OUT] [-r REPORT] [-m MAIN] [--verify "ARGS"]

Ports TPU (and GPU/Horovod) TensorFlow code onto the migration runtime, so the result runs
on an Ascend NPU through npu_bridge and unchanged on CPU/GPU. The command line is that of
Huawei's convert_tf2npu: -i/--input is required, the output and
report folders may not lie inside the input, only .py files are rewritten and everything
else is copied, the input is never modified. Unlike it, OUT and REPORT are the folders
themselves (no timestamped subfolder), so `diff -r SRC OUT` compares the trees directly.

Converted scripts take the backend options from MIGRATION_* environment variables
(MIGRATION_DEVICE, MIGRATION_PRECISION_MODE, ...; see migration/runtime.py).

Exit status: 0 when everything converted (and verified, with --verify), 1 when anything
could not be converted or a verification run failed, 2 for bad arguments.
"""
import argparse
import os
import shutil
import sys
import time

from migration.convert import report
from migration.convert import rewrite
from migration.convert import verify

_BOM = "\ufeff"
_MAX_BYTES = 10 * 1024 * 1024  # as convert_tf2npu: larger .py files are copied, with a warning


class UsageError(Exception):
  """Bad arguments: one line, exit status 2."""


def _parser():
  parser = argparse.ArgumentParser(
      prog="python -m migration.convert", description=__doc__.split("\n\n")[1],
      epilog="\n\n".join(__doc__.split("\n\n")[2:]),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-i", "--input", required=True,
                      help="folder (or one .py file) of the TPU scripts; never modified")
  parser.add_argument("-o", "--output", help="folder for the converted tree (new or empty; "
                      "default output_npu_<timestamp>)")
  parser.add_argument("-r", "--report", help="folder for the reports (default "
                      "report_npu_<timestamp>)")
  parser.add_argument("-m", "--main", help="the entry script, inside the input; needed "
                      "by --verify")
  parser.add_argument("--verify", metavar="ARGS", help="after converting, run MAIN with "
                      "ARGS on the CPU and with the NPU adapter's test double (npu_bridge "
                      "on TF 1.15, npu_device on TF 2.x); {run} in ARGS "
                      "becomes a fresh folder per run. Write --verify=\"--flag=x ...\"")
  parser.add_argument("--verify_timeout", type=int, default=1800,
                      help="seconds each verification run may take")
  return parser


def _inside(path, folder):
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check(args):
  """Resolves and checks the folders; returns (input root, files, output, report, main)."""
  source = args.input
  if not os.path.exists(source):
    raise UsageError("-i %s: no such folder or file" % source)
  if os.path.isfile(source) and not source.endswith(".py"):
    raise UsageError("-i %s: expected a folder or a .py file" % source)
  stamp = time.strftime("%Y%m%d%H%M%S")
  output = args.output or "output_npu_" + stamp
  report_dir = args.report or "report_npu_" + stamp
  root = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
  for flag, folder in (("-o", output), ("-r", report_dir)):
    if _inside(folder, root):
      raise UsageError("%s %s lies inside the input %s; choose a folder outside it"
                       % (flag, folder, source))
  if os.path.isfile(output) or (os.path.isdir(output) and os.listdir(output)):
    raise UsageError("-o %s exists and is not an empty folder; remove it or choose another"
                     % output)
  main = None
  if args.main:
    inside = os.path.join(root, args.main)
    main = inside if os.path.isfile(inside) else args.main
    if not os.path.isfile(main) or not _inside(main, root):
      raise UsageError("-m %s: not a file inside the input %s" % (args.main, source))
  if args.verify is not None and main is None:
    raise UsageError("--verify needs -m MAIN, the script to run")
  if os.path.isfile(source):
    files = [os.path.basename(source)]
  else:
    files = sorted(os.path.relpath(os.path.join(folder, name), root)
                   for folder, subfolders, names in os.walk(root)
                   for name in names
                   if "__pycache__" not in os.path.relpath(folder, root).split(os.sep))
  return root, files, output, report_dir, main


def _convert_file(source_path, target_path):
  """Converts one .py file; returns (original source, rewrite.Result). Raises ParseError,
  UnicodeDecodeError or OSError."""
  with open(source_path, encoding="utf-8") as f:
    source = f.read()
  bom = source[:1] == _BOM  # kept on output; pasta cannot parse it
  result = rewrite.convert_source(source[int(bom):])
  if bom:
    result = result._replace(source=_BOM + result.source)
  with open(target_path, "w", encoding="utf-8") as f:
    f.write(result.source)
  shutil.copystat(source_path, target_path)
  return source, result


def convert_tree(root, files, output):
  """Converts or copies each file; returns (results, failed files, sources), where a failed
  file maps to (line, what went wrong)."""
  results, failed, sources = {}, {}, {}
  for path in files:
    source_path, target_path = os.path.join(root, path), os.path.join(output, path)
    try:
      os.makedirs(os.path.dirname(target_path) or ".", exist_ok=True)
      if not path.endswith(".py") or os.path.getsize(source_path) > _MAX_BYTES:
        if path.endswith(".py"):
          print("warning: %s is over 10 MiB; copied unchanged" % path)
        shutil.copy2(source_path, target_path)
        continue
      try:
        sources[path], results[path] = _convert_file(source_path, target_path)
      except (rewrite.ParseError, UnicodeDecodeError) as error:
        line, message = ((error.line, error.message) if isinstance(error, rewrite.ParseError)
                         else ("?", "not UTF-8 text"))
        failed[path] = (line, "cannot be parsed (%s); copied unchanged" % message)
        shutil.copy2(source_path, target_path)
    except OSError as error:
      failed[path] = ("-", "cannot be read or copied (%s)" % error)
    if path in failed:
      print("error: %s:%s %s" % ((path,) + failed[path]))
    elif path in results and (results[path].changes or results[path].problems):
      print("%s: %d changes, %d not converted" % (path, len(results[path].changes),
                                                 len(results[path].problems)))
  return results, failed, sources


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    root, files, output, report_dir, main_script = _check(args)
    for flag, folder in (("-o", output), ("-r", report_dir)):
      try:
        os.makedirs(folder, exist_ok=True)
      except OSError as error:
        raise UsageError("%s %s cannot be created (%s)" % (flag, folder, error))
  except UsageError as error:
    print("error: %s" % error, file=sys.stderr)
    return 2
  results, failed, sources = convert_tree(root, files, output)
  print(report.write(report_dir, results, failed, sources), end="")
  not_converted = sum(len(r.problems) for r in results.values()) + len(failed)
  print("Converted %d files into %s; reports in %s" % (len(results), output, report_dir))
  status = 0
  if not_converted:
    print("%d item(s) could not be converted: see %s and %s" % (
        not_converted, os.path.join(report_dir, "failed_report.txt"),
        os.path.join(report_dir, "need_migration_doc.txt")))
    status = 1
  if args.verify is not None:
    converted_main = os.path.join(output, os.path.relpath(main_script, root))
    verdicts = verify.run(converted_main, output, args.verify, report_dir,
                          args.verify_timeout)
    if not all(ok for _, ok, _ in verdicts):
      status = 1
  return status


if __name__ == "__main__":
  sys.exit(main())
