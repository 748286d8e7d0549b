"""Input pipelines: tf.data input_fns over tfrecords, and the checks of their files."""
import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_root():
  """Where the real data sets live: $DATA_ROOT, else ../shared/data beside the repository."""
  return os.path.normpath(os.environ.get("DATA_ROOT") or
                          os.path.join(_REPO, "..", "shared", "data"))


def worker_shard(input_context=None):
  """(num_workers, worker_index) from a tf.distribute InputContext or RANK_SIZE/RANK_ID."""
  if input_context is not None:
    return input_context.num_input_pipelines, input_context.input_pipeline_id
  values = {}
  for name, default in (("RANK_SIZE", "1"), ("RANK_ID", "0")):
    raw = os.environ.get(name, default)
    try:
      values[name] = int(raw)
    except ValueError:
      raise ValueError("environment variable %s=%r is not an integer" % (name, raw))
  if values["RANK_SIZE"] < 1 or not 0 <= values["RANK_ID"] < values["RANK_SIZE"]:
    raise ValueError("environment RANK_ID=%d, RANK_SIZE=%d: need 0 <= RANK_ID < RANK_SIZE" %
                     (values["RANK_ID"], values["RANK_SIZE"]))
  return values["RANK_SIZE"], values["RANK_ID"]
