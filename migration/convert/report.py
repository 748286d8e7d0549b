"""The converter's report folder: Huawei's four text files, plus report.json and changes.diff.

Line formats follow convert_tf2npu (migration_tool.md §3), so scripts that read Huawei's
reports read these: `<file>:<line> change <before> to <after>` for each change,
`<file>:<line> <api> is not support migration.` for what was not converted, and the
two-line API summary.
"""
import difflib
import json
import os

_SUMMARY_FIELDS = ("Support", "API support after migration",
                   "Network training support after migration",
                   "Not support but no impact on migration", "Not support or recommended",
                   "Compatible", "Deprecated", "Analysing")


def _success_line(path, change):
  if change.rule == "add-import":
    return "%s:%d add %s" % (path, change.line, change.after)
  if change.rule == "remove-import":
    return "%s:%d remove %s (nothing uses it after conversion)" % (path, change.line,
                                                                  change.before)
  if change.rule == "tpu-only-argument":
    return "%s:%d remove argument %s (TPU only)" % (path, change.line, change.before)
  if change.rule == "drop-remainder":
    return "%s:%d change %s to %s (True on the NPU: static shapes, a last partial batch is " \
           "dropped there)" % (path, change.line, change.before or "batch()", change.after)
  if not change.before:
    return "%s:%d add %s" % (path, change.line, change.after)
  return "%s:%d change %s to %s" % (path, change.line, change.before, change.after)


def _summary(counts):
  return ", ".join("%s: %d" % (field, counts.get(field, 0)) for field in _SUMMARY_FIELDS)


def _brief(results):
  """Huawei's two summary lines: per use, then per distinct API."""
  uses, distinct = {}, {}
  for result in results.values():
    for change in result.changes:
      if change.rule in ("add-import", "remove-import"):
        continue
      field = ("Not support but no impact on migration" if change.rule == "tpu-only-argument"
               else "API support after migration")
      uses[field] = uses.get(field, 0) + 1
      distinct.setdefault(field, set()).add(change.before or change.after)
    for problem in result.problems:
      field = "Not support or recommended"
      uses[field] = uses.get(field, 0) + 1
      distinct.setdefault(field, set()).add(problem.api)
  distinct = {field: len(names) for field, names in distinct.items()}
  return ("1.In brief: Total API: %d, in which %s\n2.After eliminate duplicate: Total API: "
          "%d, in which %s\n" % (sum(uses.values()), _summary(uses),
                                 sum(distinct.values()), _summary(distinct)))


def write(report_dir, results, failed, sources):
  """Writes every report file; `results` maps relative path -> rewrite.Result, `failed`
  relative path -> (line, what went wrong), `sources` relative path -> original text."""
  os.makedirs(report_dir, exist_ok=True)

  def _write(name, lines):
    with open(os.path.join(report_dir, name), "w") as f:
      f.writelines(line + "\n" for line in lines)

  _write("success_report.txt", [_success_line(path, change)
                                for path, result in sorted(results.items())
                                for change in result.changes])
  _write("failed_report.txt", [
      "%s:%s %s is not support migration. %s" % (path, problem.line, problem.api, problem.why)
      for path, result in sorted(results.items()) for problem in result.problems
      if not problem.manual] + [
          "%s:%s %s" % (path, line, message) for path, (line, message) in sorted(failed.items())])
  _write("need_migration_doc.txt", [
      '%s:%s "%s" feature needs to be migrated manually, Please refer to the migration '
      "guide. %s" % (path, problem.line, problem.api, problem.why)
      for path, result in sorted(results.items()) for problem in result.problems
      if problem.manual])
  with open(os.path.join(report_dir, "api_brief_report.txt"), "w") as f:
    f.write(_brief(results))
  with open(os.path.join(report_dir, "report.json"), "w") as f:
    json.dump({
        "changes": [dict(change._asdict(), file=path)
                    for path, result in sorted(results.items()) for change in result.changes],
        "not_converted": [dict(problem._asdict(), file=path)
                          for path, result in sorted(results.items())
                          for problem in result.problems],
        "files_not_converted": [{"file": path, "line": line, "error": message}
                                for path, (line, message) in sorted(failed.items())],
    }, f, indent=1, sort_keys=True)
  with open(os.path.join(report_dir, "changes.diff"), "w") as f:
    for path, result in sorted(results.items()):
      if result.source != sources[path]:
        f.writelines(difflib.unified_diff(sources[path].splitlines(True),
                                          result.source.splitlines(True),
                                          "a/" + path, "b/" + path))
  return _brief(results)
