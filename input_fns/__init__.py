"""Input pipelines: tf.data input_fns over tfrecords, and the checks of their files."""
import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_root():
  """Where the real data sets live: $DATA_ROOT, else ../shared/data beside the repository."""
  return os.path.normpath(os.environ.get("DATA_ROOT") or
                          os.path.join(_REPO, "..", "shared", "data"))
