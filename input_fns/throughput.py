"""Input-pipeline throughput: how many images/sec an input_fn delivers, with no model."""
import time

import tensorflow.compat.v1 as tf

from input_fns import imagenet


def measure_throughput(input_fn, batch_size, num_batches, warmup_batches=2):
  """Builds input_fn({'batch_size': batch_size}) in a fresh graph; returns images/sec.

  The first `warmup_batches` (pipeline start-up, file opening) are not timed. Only a scalar
  per batch is fetched, so the number excludes copying batches into Python. If the dataset
  ends early, the rate over the batches read is returned. A DataLossError from a corrupt
  shard is re-raised by `imagenet.check_tfrecords` naming the file when the input_fn has
  a `files` attribute.
  """
  if batch_size <= 0 or num_batches <= 0 or warmup_batches < 0:
    raise ValueError("need batch_size > 0, num_batches > 0, warmup_batches >= 0; got %r, %r, %r"
                     % (batch_size, num_batches, warmup_batches))
  with tf.Graph().as_default():
    dataset = input_fn({"batch_size": batch_size})
    iterator = tf.data.make_initializable_iterator(dataset)
    first = tf.nest.flatten(iterator.get_next())[0]  # images, or the first feature
    fetch = [tf.reshape(first, [-1])[0], tf.shape(first)[0]]
    with tf.Session() as session:
      session.run(iterator.initializer)
      images_read = 0
      start = None
      try:
        for _ in range(warmup_batches):
          session.run(fetch)
        start = time.time()
        for _ in range(num_batches):
          images_read += session.run(fetch)[1]
      except tf.errors.OutOfRangeError:
        pass
      except tf.errors.DataLossError:
        files = getattr(input_fn, "files", None)
        if files:
          imagenet.check_tfrecords(files)
        raise
      elapsed = time.time() - start if start is not None else 0.0
  if not images_read:
    raise ValueError("the input ended before any timed batch (%d warm-up batches requested)" %
                     warmup_batches)
  return images_read / elapsed
