"""Checks of the NPU/precision options and their config files, run before any graph is built.

Each failure is one `ConfigError` line naming the flag, file or key and what was expected.
The rules are those of npu_bridge (see shared/reference/npu_bridge_api.md §2, §8, §9); they
are enforced on every backend so that a bad Ascend configuration is caught on a laptop.
"""
import json
import os
import re

PRECISION_MODES = (
    "force_fp32", "allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype",
    "allow_mix_precision", "cube_fp16in_fp32out", "allow_mix_precision_fp16",
    "allow_mix_precision_bf16", "allow_fp32_to_bf16")
MIXLIST_PRECISION_MODES = (
    "allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
DUMP_MODES = ("input", "output", "all")
OP_COMPILER_CACHE_MODES = ("enable", "disable", "force")
DUMP_DEBUG_MODES = ("aicore_overflow", "atomic_overflow", "all")
_DUMP_STEP = re.compile(r"^\d+(-\d+)?(\|\d+(-\d+)?)*$")
_ID = re.compile(r"^[0-9]+$")


class ConfigError(ValueError):
  """An invalid flag value or config file; the message is one line for the user."""


def check_precision_mode(precision_mode):
  if precision_mode and precision_mode not in PRECISION_MODES:
    raise ConfigError("--precision_mode=%s is not valid; expected one of: %s"
                      % (precision_mode, ", ".join(PRECISION_MODES)))


def _load_json(path, flag):
  if not os.path.isfile(path):
    raise ConfigError("%s: file %s does not exist" % (flag, path))
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ConfigError("%s: %s is not valid JSON (%s)" % (flag, path, e))


def check_fusion_switch_file(path):
  """`{"Switch": {"GraphFusion": {pass: "on"|"off"}, "UBFusion": {...}}}` (§9.1)."""
  data = _load_json(path, "--fusion_switch_file")
  where = "--fusion_switch_file %s" % path
  if not isinstance(data, dict) or set(data) != {"Switch"} or not isinstance(
      data["Switch"], dict):
    raise ConfigError('%s: expected a top-level object {"Switch": {...}}' % where)
  for kind, passes in data["Switch"].items():
    if kind not in ("GraphFusion", "UBFusion"):
      raise ConfigError('%s: key "Switch.%s" is not GraphFusion or UBFusion' % (where, kind))
    if not isinstance(passes, dict):
      raise ConfigError('%s: "Switch.%s" must map pass names to "on"/"off"' % (where, kind))
    for name, value in passes.items():
      if value not in ("on", "off"):
        raise ConfigError('%s: "Switch.%s.%s" is %r; expected "on" or "off"'
                          % (where, kind, name, value))


def check_mixlist_file(path):
  """`{"black-list"|"white-list"|"gray-list": {"to-add": [op], "to-remove": [op]}}` (§9.2)."""
  data = _load_json(path, "--modify_mixlist")
  where = "--modify_mixlist %s" % path
  if not isinstance(data, dict) or not data:
    raise ConfigError("%s: expected an object with black-list/white-list/gray-list" % where)
  for list_name, entry in data.items():
    if list_name not in ("black-list", "white-list", "gray-list"):
      raise ConfigError('%s: key "%s" is not black-list, white-list or gray-list'
                        % (where, list_name))
    if not isinstance(entry, dict):
      raise ConfigError('%s: "%s" must be an object with to-add/to-remove' % (where, list_name))
    for action, op_types in entry.items():
      if action not in ("to-add", "to-remove"):
        raise ConfigError('%s: key "%s.%s" is not to-add or to-remove'
                          % (where, list_name, action))
      if not isinstance(op_types, list) or not all(
          isinstance(op, str) and op for op in op_types):
        raise ConfigError('%s: "%s.%s" must be a list of op type names'
                          % (where, list_name, action))


def check_rank_table_file(path, rank_size=None, rank_id=None):
  """Rank table version 1.0 (§9.3); with rank_size/rank_id, also their consistency.

  HCCL numbers the ranks 0..N-1 over the whole table and addresses a device by its id on
  its server, so both must be unique and numeric. Returns the parsed table (the launchers
  read each rank's device from it).
  """
  data = _load_json(path, "RANK_TABLE_FILE")
  where = "RANK_TABLE_FILE %s" % path
  if not isinstance(data, dict):
    raise ConfigError("%s: expected a JSON object with server_list" % where)
  for key in ("server_count", "server_list", "status", "version"):
    if key not in data:
      raise ConfigError('%s: missing key "%s"' % (where, key))
  if not isinstance(data["server_list"], list) or not data["server_list"]:
    raise ConfigError('%s: "server_list" must be a non-empty list' % where)
  rank_ids = {}  # rank -> the entry listing it
  for i, server in enumerate(data["server_list"]):
    if not isinstance(server, dict) or "server_id" not in server or not isinstance(
        server.get("device"), list):
      raise ConfigError('%s: server_list[%d] needs "server_id" and a "device" list' % (where, i))
    device_ids = set()
    for j, device in enumerate(server["device"]):
      entry = "server_list[%d].device[%d]" % (i, j)
      for key in ("device_id", "device_ip", "rank_id"):
        value = device.get(key) if isinstance(device, dict) else None
        if not isinstance(value, str):
          raise ConfigError("%s: %s.%s must be a string" % (where, entry, key))
      for key in ("device_id", "rank_id"):
        if not _ID.match(device[key]):
          raise ConfigError('%s: %s.%s is "%s"; expected a non-negative integer'
                            % (where, entry, key, device[key]))
      if int(device["device_id"]) in device_ids:
        raise ConfigError('%s: %s.device_id "%s" is listed twice on server %s'
                          % (where, entry, device["device_id"], server["server_id"]))
      device_ids.add(int(device["device_id"]))
      rank = int(device["rank_id"])
      if rank in rank_ids:
        raise ConfigError('%s: %s.rank_id "%s" is also the rank_id of %s'
                          % (where, entry, device["rank_id"], rank_ids[rank]))
      rank_ids[rank] = entry
  if data["server_count"] != str(len(data["server_list"])):
    raise ConfigError('%s: "server_count" is %r but server_list has %d entries'
                      % (where, data["server_count"], len(data["server_list"])))
  if not rank_ids:
    raise ConfigError("%s: server_list lists no device" % where)
  outside = sorted(rank for rank in rank_ids if rank >= len(rank_ids))
  if outside:
    raise ConfigError("%s: %s.rank_id is %d; the %d devices must have the ranks 0..%d"
                      % (where, rank_ids[outside[0]], outside[0], len(rank_ids),
                         len(rank_ids) - 1))
  if rank_size is not None and int(rank_size) != len(rank_ids):
    raise ConfigError("RANK_SIZE=%s but %s lists %d devices" % (rank_size, path, len(rank_ids)))
  if rank_id is not None and int(rank_id) not in rank_ids:
    raise ConfigError("RANK_ID=%s is not a rank_id in %s (has 0..%d)"
                      % (rank_id, path, len(rank_ids) - 1))
  return data


def check_dump_step(dump_step):
  """`0|5|10` or ranges such as `0-3|8` (§2.3)."""
  if not _DUMP_STEP.match(dump_step or ""):
    raise ConfigError("--dump_step=%r is malformed; expected steps joined by '|', each N or "
                      "N-M, e.g. 0|5|10 or 0-3" % dump_step)
  for part in dump_step.split("|"):
    if "-" in part:
      start, end = part.split("-")
      if int(start) > int(end):
        raise ConfigError("--dump_step=%r: range %s runs backwards" % (dump_step, part))


def check_profiling_options(options):
  """A JSON object string such as {"output": "/tmp/prof", "training_trace": "on"} (§2.4)."""
  try:
    parsed = json.loads(options)
  except ValueError as e:
    raise ConfigError("--profiling_options is not valid JSON (%s): %r" % (e, options))
  if not isinstance(parsed, dict):
    raise ConfigError("--profiling_options must be a JSON object, got %r" % options)


def check_environment(environ=None):
  """RANK_ID/RANK_SIZE/RANK_TABLE_FILE must agree with each other (§10)."""
  env = os.environ if environ is None else environ
  rank_size = env.get("RANK_SIZE")
  if rank_size is not None and env.get("CM_WORKER_SIZE") is not None:
    raise ConfigError("RANK_SIZE and CM_WORKER_SIZE are both set; set only one")
  if rank_size is not None and (not rank_size.isdigit() or int(rank_size) < 1):
    raise ConfigError("RANK_SIZE=%r must be a positive integer" % rank_size)
  rank_id = env.get("RANK_ID")
  if rank_id is not None:
    if not rank_id.isdigit():
      raise ConfigError("RANK_ID=%r must be a non-negative integer" % rank_id)
    if rank_size is not None and int(rank_id) >= int(rank_size):
      raise ConfigError("RANK_ID=%s must be below RANK_SIZE=%s" % (rank_id, rank_size))
  table = env.get("RANK_TABLE_FILE")
  if table:
    check_rank_table_file(table, rank_size, rank_id)
  elif rank_size is not None and int(rank_size) > 1:
    raise ConfigError("RANK_SIZE=%s needs RANK_TABLE_FILE naming the rank table" % rank_size)


def check_npu_options(opts, environ=None):
  """Validates an `NpuOptions` (see migration.run_config) and the rank environment."""
  check_precision_mode(opts.precision_mode)
  if opts.modify_mixlist:
    if opts.precision_mode not in MIXLIST_PRECISION_MODES:
      raise ConfigError("--modify_mixlist needs --precision_mode in %s, not %r"
                        % ("/".join(MIXLIST_PRECISION_MODES), opts.precision_mode))
    check_mixlist_file(opts.modify_mixlist)
  if opts.fusion_switch_file:
    check_fusion_switch_file(opts.fusion_switch_file)
  if not isinstance(opts.iterations_per_loop, int) or opts.iterations_per_loop < 1:
    raise ConfigError("--iterations_per_loop=%r must be a positive integer"
                      % opts.iterations_per_loop)
  if opts.mix_compile_mode and opts.iterations_per_loop != 1:
    raise ConfigError("--mix_compile_mode needs --iterations_per_loop=1, got %d"
                      % opts.iterations_per_loop)
  if opts.enable_dump or opts.enable_dump_debug:
    if not opts.dump_path:
      raise ConfigError("--dump_path is required with --enable_dump/--enable_dump_debug")
  if opts.enable_dump:
    check_dump_step(opts.dump_step)
    if opts.dump_mode not in DUMP_MODES:
      raise ConfigError("--dump_mode=%s is not one of %s" % (opts.dump_mode, DUMP_MODES))
  if opts.enable_dump_debug and opts.dump_debug_mode not in DUMP_DEBUG_MODES:
    raise ConfigError("--dump_debug_mode=%s is not one of %s"
                      % (opts.dump_debug_mode, DUMP_DEBUG_MODES))
  if opts.enable_profiling and opts.profiling_options:
    check_profiling_options(opts.profiling_options)
  if opts.op_compiler_cache_mode and opts.op_compiler_cache_mode not in OP_COMPILER_CACHE_MODES:
    raise ConfigError("--op_compiler_cache_mode=%s is not one of %s"
                      % (opts.op_compiler_cache_mode, "|".join(OP_COMPILER_CACHE_MODES)))
  check_environment(environ)
