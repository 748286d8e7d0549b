"""tf-slim vs estimators/layers.py (issue #15 item 8): parity, CPU step time, graph size.

An AmoebaNet-style stack (stem conv+BN; cells: ReLU-1x1-BN, 1x7_7x1 bottleneck, 3x3 pools;
FC; softmax + L2) built with estimators/layers.py and with tf_slim under arg_scope, given the
same inputs and variable values: logits, loss, gradients, BN moving stats after one update,
loss+grads+UPDATE_OPS step time (interleaved, same threads). --slim_bn=fused takes
slim.batch_norm's fused path, not its Keras-layer default. Needs tf-slim==1.1.0 (+ shim()).
  python benchmarks/slim_layers.py [--slim_bn=layer|fused --repeats=7 --steps=10]
"""
import argparse, os, sys, time  # pylint: disable=multiple-imports
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow.compat.v1 as tf  # pylint: disable=wrong-import-position
from benchmarks import common  # pylint: disable=wrong-import-position
from estimators import layers  # pylint: disable=wrong-import-position

tf.disable_eager_execution()
_START = time.time()
import tf_slim as slim  # pylint: disable=g-import-not-at-top,wrong-import-position
IMPORT_SECONDS = time.time() - _START
WD, DECAY, EPS = 4e-5, 0.9, 1e-5  # AmoebaNet-D weight_decay, batch_norm_decay / _epsilon
POOL = ([1, 3, 3, 1], [1, 1, 1, 1], "SAME")


def shim(full):
  """TF 2.15: tensorflow/python/layers/normalization.py lazy-loads tf_keras.legacy_tf_layers,
  absent (tf-keras 2.15 has only tf_keras.src.*): point it at Keras 2's copy (2 lines). `full`
  restores ops.Tensor (moved to framework.tensor) for slim's fused and rank-2 batch_norm."""
  if tf.__version__.startswith("1."):
    return False
  # pylint: disable=g-import-not-at-top
  from tensorflow.python.layers import normalization as tf_norm
  from keras.src.legacy_tf_layers import normalization as keras_norm
  tf_norm.normalization = keras_norm
  if full:
    from tensorflow.python.framework import ops, tensor
    ops.Tensor = tensor.Tensor
  return True


def probe(shape):
  with tf.Graph().as_default():
    try:
      slim.batch_norm(tf.zeros(shape), is_training=True, scale=True)
    except Exception as e:  # pylint: disable=broad-except
      return "%s: %s" % (type(e).__name__, e)


OURS = dict(
    conv=lambda x, f, k, s=1, p="SAME", name="c": layers.conv2d(
        x, f, k, strides=s, padding=p, weight_decay=WD, name=name),
    bn=lambda x, name: layers.batch_norm(x, True, decay=DECAY, epsilon=EPS, name=name),
    fc=lambda x, n: layers.dense(x, n, weight_decay=WD, name="FC"),
    maxp=lambda x: tf.nn.max_pool(x, *POOL), avgp=lambda x: tf.nn.avg_pool(x, *POOL),
    l2=layers.l2_regularization_loss)
SLIM = dict(
    conv=lambda x, f, k, s=1, p="SAME", name="c": slim.conv2d(x, f, k, s, p, scope=name),
    bn=lambda x, name: slim.batch_norm(x, scope=name),
    fc=lambda x, n: slim.fully_connected(x, n, scope="FC"),
    maxp=lambda x: slim.max_pool2d(x, 3, 1, "SAME"),
    avgp=lambda x: slim.avg_pool2d(x, 3, 1, "SAME"),
    l2=lambda: tf.add_n(tf.get_collection(tf.GraphKeys.REGULARIZATION_LOSSES)))


def network(o, images, labels, f, cells, classes):
  relu, bn, conv = tf.nn.relu, o["bn"], o["conv"]
  net = bn(conv(images, f, 3, 2, "VALID", name="conv0"), "conv0_bn")
  for i in range(cells):
    with tf.variable_scope("cell_%d" % i):
      h0 = bn(conv(relu(net), f, 1, name="1x1"), "beginning_bn")
      b = bn(conv(relu(h0), f // 4, 1, name="pre_1x1"), "pre_bn")
      b = bn(conv(relu(b), f // 4, [1, 7], name="1x7"), "bn_1x7_7x1")
      b = bn(conv(relu(b), f // 4, [7, 1], name="7x1"), "bn")
      b = bn(conv(relu(b), f, 1, name="post_1x1"), "post_bn")
      net = tf.concat([h0, b, o["maxp"](h0) + o["avgp"](h0)], 3)
  logits = o["fc"](tf.reduce_mean(relu(net), [1, 2]), classes)
  return logits, tf.losses.sparse_softmax_cross_entropy(labels, logits) + o["l2"]()


def build(kind, args, data):
  with tf.Graph().as_default() as graph:
    start, bn_args = time.time(), dict(decay=DECAY, epsilon=EPS, scale=True, is_training=True)
    if args.slim_bn == "fused":
      bn_args["updates_collections"] = [tf.GraphKeys.UPDATE_OPS]  # a list: not `is` the default
    with slim.arg_scope([slim.conv2d, slim.fully_connected], activation_fn=None,
                        weights_regularizer=slim.l2_regularizer(WD)), \
         slim.arg_scope([slim.conv2d], biases_initializer=None), \
         slim.arg_scope([slim.batch_norm], **bn_args):
      logits, loss = network(SLIM if kind == "slim" else OURS, tf.constant(data[0]),
                             tf.constant(data[1]), args.filters, args.cells, args.classes)
    forward = graph.as_graph_def()
    names = {v: v.op.name.replace("/weights", "/kernel").replace("/biases", "/bias")
             for v in tf.global_variables()}
    trainable = sorted(tf.trainable_variables(), key=names.get)
    grads, updates = tf.gradients(loss, trainable), tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    build_seconds, full = time.time() - start, graph.as_graph_def()
    sess = tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=args.threads,
                                            inter_op_parallelism_threads=1))
    rng = np.random.RandomState(0)
    for v in sorted(names, key=names.get):  # the same values in both builds, by canonical name
      shape, last = v.shape.as_list(), names[v].split("/")[-1]
      value = {"gamma": 1 + 0.1 * rng.randn(*shape),
               "moving_variance": 1 + 0.1 * np.abs(rng.randn(*shape))}.get(
                   last, rng.randn(*shape) * (np.prod(shape[:-1]) ** -0.5 if shape[1:] else 0.1))
      v.load(value.astype(np.float32), sess)
    values = sess.run({"logits": logits, "loss": loss,
                       "grads": {names[v]: g for v, g in zip(trainable, grads)}})
    sess.run(updates)
    values["moving"] = {n: sess.run(v) for v, n in names.items() if "moving" in n}
  info = {"graph_nodes_forward": len(forward.node), "graph_nodes_with_gradients": len(full.node),
          "graphdef_bytes_with_gradients": full.ByteSize(), "variables": len(names),
          "variables_named_differently": sum(n != v.op.name for v, n in names.items()),
          "graph_build_seconds": round(build_seconds, 3)}
  return dict(sess=sess, step=[loss, grads, updates], values=values, info=info, ms=[], cpu_ms=[])


def compare(a, b):
  pairs = [(a[k], b[k]) for k in sorted(a)] if isinstance(a, dict) else [(a, b)]
  return {"max_abs_diff": max(float(np.max(np.abs(x - y))) for x, y in pairs),
          "tensors_differing": sum(not np.array_equal(x, y) for x, y in pairs),
          "tensors": len(pairs)}


def main():
  parser = argparse.ArgumentParser()
  for flag, default in [("batch", 16), ("size", 64), ("filters", 64), ("cells", 3),
                        ("classes", 1001), ("repeats", 7), ("steps", 10), ("threads", 2)]:
    parser.add_argument("--" + flag, type=int, default=default)
  parser.add_argument("--slim_bn", choices=["layer", "fused"], default="layer")
  args = parser.parse_args()
  rng = np.random.RandomState(1)
  data = (rng.rand(args.batch, args.size, args.size, 3).astype(np.float32),
          rng.randint(0, args.classes, args.batch).astype(np.int32))
  result = dict(common.environment_info(), args=vars(args),
                tf_slim_import_seconds=round(IMPORT_SECONDS, 3),
                slim_batch_norm_error_no_shim=probe([2, 4, 4, 3]), two_line_shim=shim(False),
                slim_batch_norm_rank2_error_two_line_shim=probe([2, 3]), full_shim=shim(True))
  build("ours", args, data)["sess"].close()  # warm-up, so that the build times compare
  builds = {k: build(k, args, data) for k in ("ours", "slim")}
  a, b = builds["ours"]["values"], builds["slim"]["values"]
  result.update({k: compare(a[k], b[k]) for k in a})
  for _ in range(1 + args.repeats):  # round 0 is the warm-up; a/b interleaved against load
    for bd in builds.values():
      start, cpu = time.time(), time.process_time()  # process CPU: less hit by other load
      for _ in range(args.steps):
        bd["sess"].run(bd["step"])
      bd["ms"].append(round((time.time() - start) / args.steps * 1000, 2))
      bd["cpu_ms"].append(round((time.process_time() - cpu) / args.steps * 1000, 2))
  for k, bd in builds.items():
    result[k] = dict(bd["info"], step_ms=bd["ms"][1:], step_ms_median=np.median(bd["ms"][1:]),
                     step_cpu_ms=bd["cpu_ms"][1:], step_cpu_ms_median=np.median(bd["cpu_ms"][1:]))
  for key in ("step_ms_median", "step_cpu_ms_median"):
    result["slim_over_ours_" + key] = round(result["slim"][key] / result["ours"][key], 4)
  result.update(common.load_average("load_average_at_end"))
  common.emit_json(result)


if __name__ == "__main__":
  main()
