"""Rewrites one Python source onto migration.compat, keeping everything else byte for byte.

Sources are parsed and printed with pasta (the source-to-source library TensorFlow's own
upgrade script and Huawei's tool use): nodes left alone print exactly as they were read,
so a diff of input and output shows only the rewritten expressions and the import lines.
"""
import ast
import collections

import pasta
from pasta.base import formatting

from migration.convert import apis

Change = collections.namedtuple("Change", ["line", "rule", "before", "after"])
Problem = collections.namedtuple("Problem", ["line", "api", "why", "manual"])
Result = collections.namedtuple("Result", ["source", "changes", "problems"])


class ParseError(Exception):
  """The source cannot be parsed (or pasta cannot print it back unchanged)."""

  def __init__(self, line, message):
    super(ParseError, self).__init__("line %s: %s" % (line, message))
    self.line = line
    self.message = message


def _expression(code):
  return pasta.parse(code).body[0].value


def _dotted(node):
  """`a.b.c` for a chain of attributes on a name, else None."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  parts.append(node.id)
  return ".".join(reversed(parts))


def _is_true(node):
  return getattr(node, "value", None) is True


def _import_bindings(node):
  """(bound name, dotted target) for each alias of an import statement; the target is None
  where it is unknown here (relative and star imports)."""
  for alias in node.names:
    if isinstance(node, ast.Import):
      if alias.asname:
        yield alias.asname, alias.name
      else:
        first = alias.name.split(".")[0]
        yield first, first
    elif node.level or alias.name == "*":
      yield alias.asname or alias.name, None
    else:
      yield alias.asname or alias.name, node.module + "." + alias.name


def _names_used(tree):
  return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _statement_lists(tree):
  for node in ast.walk(tree):
    for field in ("body", "orelse", "finalbody"):
      statements = getattr(node, field, None)
      if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
        yield statements


class _Replace(ast.NodeTransformer):
  """Replaces the names and attribute chains `match` accepts by `make(node)`."""

  def __init__(self, match, make):
    self._match = match
    self._make = make

  def _visit(self, node):
    return self._make(node) if self._match(node) else self.generic_visit(node)

  visit_Name = visit_Attribute = _visit


_SUBCLASS_WHY = ("a class derived from a TPU class: migration.compat's stand-in is a "
                 "factory; derive from tf.estimator.Estimator and build its config with "
                 "migration.compat.RunConfig")
_ISINSTANCE_WHY = ("a type test against a TPU class: migration.compat's stand-ins return the "
                   "backend's objects (EstimatorSpec, RunConfig); test against those")
_STAR_WHY = ("a star import from a TPU module: the names it brings are not seen, so not "
             "converted; import them by name")


class _Rewriter(ast.NodeTransformer):
  """Renames API references and adjusts the arguments of a few calls (see apis)."""

  def __init__(self, bindings):
    self.bindings = bindings
    self.changes = []
    self.problems = []
    self.modules_used = set()

  # --- names ---

  def _qualified(self, node):
    dotted = _dotted(node)
    if dotted is None:
      return None
    first, _, rest = dotted.partition(".")
    if first not in self.bindings:
      return None
    return self.bindings[first] + ("." + rest if rest else "")

  def _target(self, node):
    qualified = self._qualified(node)
    if qualified is None:
      return None
    name = apis.canonical(qualified)
    target = apis.rename(name)
    if target is None and name.flavor is None and qualified.endswith(
        "." + apis.TPU_PROFILER_HOOK) and not qualified.startswith(apis.COMPAT):
      target = "%s.%s" % (apis.COMPAT, apis.TPU_PROFILER_HOOK)
    return target

  def _new(self, target, place, replaces=True):
    """`target` parsed, at the position of node `place` (pasta prints a call's arguments in
    the order of their positions), with its white space when it `replaces` it."""
    self.modules_used.add(target.split("(")[0].rsplit(".", 1)[0])
    new = ast.copy_location(_expression(target), place)
    for key in ("prefix", "suffix"):
      if replaces and formatting.get(place, key):
        formatting.set(new, key, formatting.get(place, key))
    return new

  def _reference(self, node):
    """A name or attribute chain: the innermost part with a rule is replaced; a TPU API
    with none is reported. Assignment targets are left alone."""
    if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
      return node
    chain = []
    part = node
    while isinstance(part, ast.Attribute):
      chain.append(part)
      part = part.value
    chain.append(part)
    for index in range(len(chain) - 1, -1, -1):
      target = self._target(chain[index])
      if target:
        self.changes.append(Change(node.lineno, "rename", pasta.dump(chain[index]), target))
        new = self._new(target, chain[index])
        if index == 0:
          return new
        chain[index - 1].value = new
        return node
    qualified = self._qualified(node)
    verdict = qualified and apis.unsupported(apis.canonical(qualified))
    if verdict:
      self.problems.append(Problem(node.lineno, pasta.dump(node), verdict[1], verdict[0]))
    return node

  def _keep_class(self, node, why):
    """A TPU class used as a class (a base, an isinstance target): its stand-in is a
    factory, so it is reported for a hand port instead of renamed."""
    if self._target(node):
      self.problems.append(Problem(node.lineno, pasta.dump(node), why, True))
      return node
    return self.visit(node)

  def visit_ClassDef(self, node):
    node.bases = [self._keep_class(base, _SUBCLASS_WHY) for base in node.bases]
    for field in ("keywords", "body", "decorator_list"):
      setattr(node, field, [self.visit(child) for child in getattr(node, field)])
    return node

  def visit_Name(self, node):
    return self._reference(node)

  def visit_ImportFrom(self, node):
    if not node.level and any(alias.name == "*" for alias in node.names):
      name = apis.canonical(node.module)
      if apis.ported_away(name) or apis.unsupported(name):
        self.problems.append(Problem(node.lineno, "from %s import *" % node.module, _STAR_WHY,
                                     False))
    return node

  def visit_Attribute(self, node):
    if _dotted(node) is None:
      return self.generic_visit(node)
    return self._reference(node)

  # --- calls ---

  def _wrap(self, value, wrapper, line, rule):
    if isinstance(value, ast.Call) and _dotted(value.func) == wrapper:
      return value
    new = self._new(wrapper + "(_)", value)
    for key in ("prefix", "suffix"):  # the white space around `value` now surrounds `new`
      if formatting.get(value, key):
        formatting.set(value, key, "")
    new.args[0] = value
    self.changes.append(Change(line, rule, pasta.dump(value), pasta.dump(new)))
    return new

  def _wrap_argument(self, call, keyword, index, wrapper, rule, default=None):
    """Wraps argument `keyword` (or positional `index`) in `wrapper(...)`; adds
    `keyword=wrapper(default)` when absent and `default` is given ("" for no argument)."""
    for kw in call.keywords:
      if kw.arg == keyword:
        if not _is_true(kw.value) or keyword != "drop_remainder":
          kw.value = self._wrap(kw.value, wrapper, call.lineno, rule)
        return
    positional = [a for a in call.args if not isinstance(a, ast.Starred)]
    if index is not None and len(positional) == len(call.args) > index:
      if not (_is_true(call.args[index]) and keyword == "drop_remainder"):
        call.args[index] = self._wrap(call.args[index], wrapper, call.lineno, rule)
      return
    if default is None or any(kw.arg is None for kw in call.keywords) or len(
        positional) < len(call.args):
      return
    last = max([call] + call.args + [kw.value for kw in call.keywords],
               key=lambda node: (node.lineno, node.col_offset))
    value = self._new("%s(%s)" % (wrapper, default), last, replaces=False)
    value.col_offset += 1  # after the last argument
    call.keywords.append(ast.keyword(arg=keyword, value=value))
    self.changes.append(Change(call.lineno, rule, "", "%s=%s" % (keyword, pasta.dump(value))))

  def _compute_dtype(self, call, index):
    """Each tf.bfloat16 in a cast's dtype -> migration.compat.bfloat16_or_float32()."""
    replace = _Replace(self._is_bfloat16,
                       lambda node: self._bfloat16_or_float32(node, call.lineno))
    for kw in call.keywords:
      if kw.arg == "dtype":
        kw.value = replace.visit(kw.value)
        return
    if len(call.args) > index:
      call.args[index] = replace.visit(call.args[index])

  def _is_bfloat16(self, node):
    qualified = self._qualified(node)
    name = qualified and apis.canonical(qualified)
    return bool(name) and name.flavor is not None and name.path in apis.BFLOAT16

  def _bfloat16_or_float32(self, node, line):
    target = apis.COMPAT + ".bfloat16_or_float32()"
    self.changes.append(Change(line, "compute-dtype", pasta.dump(node), target))
    return self._new(target, node)

  def _drop_tpu_arguments(self, call):
    kept = []
    for kw in call.keywords:
      if kw.arg in apis.TPU_ONLY_ARGUMENTS:
        self.changes.append(Change(kw.value.lineno, "tpu-only-argument",
                                   "%s=%s" % (kw.arg, pasta.dump(kw.value)), ""))
      else:
        kept.append(kw)
    call.keywords = kept

  def visit_Call(self, node):
    if (isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass") and
        len(node.args) == 2):
      classes = node.args[1]
      elements = classes.elts if isinstance(classes, ast.Tuple) else [classes]
      checked = [self._keep_class(element, _ISINSTANCE_WHY) for element in elements]
      if isinstance(classes, ast.Tuple):
        classes.elts = checked
      else:
        node.args[1] = checked[0]
      node.args[0] = self.visit(node.args[0])
      return node
    qualified = self._qualified(node.func)
    name = apis.canonical(qualified) if qualified else None
    method = node.func.attr if qualified is None and isinstance(node.func,
                                                                ast.Attribute) else None
    node = self.generic_visit(node)
    compat = apis.COMPAT + "."
    if name is not None and name.flavor is not None:
      path = name.path
      if path == "estimator.tpu.TPUEstimator":
        self._drop_tpu_arguments(node)
      elif path in apis.SESSION_CONFIG_INDEX:
        self._wrap_argument(node, "config", apis.SESSION_CONFIG_INDEX[path],
                            compat + "session_config", "session-config", default="")
      elif path in apis.CANNED_ESTIMATORS:
        self._wrap_argument(node, "config", None, compat + "run_config", "run-config",
                            default="")
      elif path in apis.CASTS:
        self._compute_dtype(node, apis.CASTS[path])
      elif path == "device":
        self._wrap_argument(node, "device_name_or_function", 0, compat + "device", "device")
      elif path in apis.MAP_AND_BATCH:
        self._wrap_argument(node, "drop_remainder", apis.MAP_AND_BATCH_DROP_REMAINDER_INDEX,
                            compat + "drop_remainder", "drop-remainder", default="False")
    elif method in apis.BATCH_METHODS:
      self._wrap_argument(node, "drop_remainder", apis.BATCH_METHODS[method],
                          compat + "drop_remainder", "drop-remainder", default="False")
    elif method == "shard":
      self._wrap_argument(node, "num_shards", 0, compat + "shard_count", "shard-by-rank")
      self._wrap_argument(node, "index", 1, compat + "shard_index", "shard-by-rank")
    return node


def _remove_imports(tree, bindings_before_use, used_after, changes):
  """Removes imports of ported-away modules that the rewrite left unused."""
  for statements in list(_statement_lists(tree)):
    for statement in list(statements):
      if not isinstance(statement, (ast.Import, ast.ImportFrom)):
        continue
      kept = [alias for alias, (bound, target) in zip(statement.names,
                                                       _import_bindings(statement))
              if target is None or bound not in bindings_before_use or bound in used_after or
              not apis.ported_away(apis.canonical(target))]
      if len(kept) == len(statement.names):
        continue
      changes.append(Change(statement.lineno, "remove-import", pasta.dump(statement).strip(),
                            ""))
      if kept:
        statement.names = kept
        continue
      position = statements.index(statement)
      statements.remove(statement)
      prefix = formatting.get(statement, "prefix") or ""
      indent = formatting.get(statement, "indent") or ""
      if statements:  # comments and blank lines above it stay, above the next statement
        following = statements[min(position, len(statements) - 1)]
        formatting.set(following, "prefix", prefix[:len(prefix) - len(indent)] +
                       (formatting.get(following, "prefix") or ""))
      else:
        placeholder = pasta.parse("pass\n").body[0]
        for key, value in (("prefix", prefix), ("indent", indent), ("suffix", "\n")):
          formatting.set(placeholder, key, value)
        statements.append(placeholder)


def _add_imports(tree, modules, changes):
  """`import migration.compat` (and .horovod) after the imports the module starts with."""
  present = {alias.name for node in tree.body if isinstance(node, ast.Import)
             for alias in node.names}
  position = 0
  for index, node in enumerate(tree.body):
    docstring = index == 0 and isinstance(node, ast.Expr) and isinstance(
        getattr(node.value, "value", node.value), (str, ast.Str))
    if not (docstring or isinstance(node, (ast.Import, ast.ImportFrom))):
      break
    if "\n" in (formatting.get(node, "suffix") or "\n"):  # not `import a; b = 1`
      position = index + 1
  for module in sorted(modules - present, reverse=True):
    statement = pasta.parse("import %s\n" % module).body[0]
    formatting.set(statement, "suffix", "\n")
    tree.body.insert(position, statement)
    line = tree.body[position - 1].lineno + 1 if position else 1
    changes.append(Change(line, "add-import", "", "import %s" % module))


def convert_source(source):
  """Returns Result(new source, changes, problems); raises ParseError."""
  try:
    tree = pasta.parse(source)
  except SyntaxError as error:
    raise ParseError(error.lineno, error.msg)
  except Exception as error:  # pylint: disable=broad-except  (pasta's own failures)
    raise ParseError(getattr(error, "lineno", "?"), "%s: %s" % (type(error).__name__, error))
  if pasta.dump(tree) != source:
    raise ParseError("?", "pasta cannot print this file back unchanged; left as it is")
  bindings = {bound: target for node in ast.walk(tree)
              if isinstance(node, (ast.Import, ast.ImportFrom))
              for bound, target in _import_bindings(node) if target is not None}
  used_before = _names_used(tree)
  rewriter = _Rewriter(bindings)
  tree = rewriter.visit(tree)
  changes = list(rewriter.changes)
  _remove_imports(tree, used_before & set(bindings), _names_used(tree), changes)
  _add_imports(tree, rewriter.modules_used, changes)
  changes.sort(key=lambda change: change.line)
  return Result(pasta.dump(tree), changes, sorted(set(rewriter.problems)))
