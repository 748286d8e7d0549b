"""AmoebaNet-D network (tensorflow/tpu models/official/amoeba_net), NHWC, float32.

Layout (model_builder.py): a 3x3/2 VALID stem conv + BN, two reduction cells as stem
cells (filters F/4, F/2), then `num_cells` normal cells with a reduction cell before normal
cell int(k/3 * num_cells), k = 1, 2 (filters double at each reduction); an auxiliary head
after normal cell reduction_indices[1] - 1 in the training graph; head ReLU -> global
average pool -> dropout -> FC(num_classes, with bias).

Cells (network_utils.BaseCell): hidden state 0 is the cell input after ReLU -> 1x1 -> BN,
hidden state 1 the output of the cell before it, brought to the current shape. Each of the
5 combinations adds two op outputs; the unused states are concatenated. Convolutions have
no bias, FAN_OUT variance-scaling init and L2 weight decay (as does the FC); BN is fused.

`logits, end_points = build(images, num_classes, is_training, config)` builds it.
"""
import collections

import tensorflow.compat.v1 as tf

from estimators import layers

CellSpec = collections.namedtuple(
    "CellSpec", ["operations", "hiddenstate_indices", "used_hiddenstates"])

# model_specs.py, "amoeba_net_d" (= evol_net_x).
NORMAL_CELL = CellSpec(
    operations=("1x1", "max_pool_3x3", "none", "1x7_7x1", "1x1", "1x7_7x1",
                "max_pool_3x3", "none", "avg_pool_3x3", "1x1"),
    hiddenstate_indices=(1, 1, 1, 0, 0, 0, 2, 2, 1, 5),
    used_hiddenstates=(0, 1, 1, 0, 0, 1, 0))
REDUCTION_CELL = CellSpec(
    operations=("max_pool_2x2", "max_pool_3x3", "none", "3x3", "1x7_7x1",
                "max_pool_3x3", "none", "max_pool_2x2", "avg_pool_3x3", "1x1"),
    hiddenstate_indices=(0, 0, 2, 1, 2, 2, 3, 1, 2, 3),
    used_hiddenstates=(1, 1, 1, 1, 0, 0, 0))

NUM_REDUCTION_LAYERS = 2
NUM_STEM_CELLS = 2
FILTER_SCALING_RATE = 2
AUX_POOL_SIZE = 5
AUX_POOL_STRIDE = 3


def reduction_indices(num_cells):
  """Normal-cell indices before which a reduction cell is inserted: int(k/3 * num_cells)."""
  return [int(float(k) / (NUM_REDUCTION_LAYERS + 1) * num_cells)
          for k in range(1, NUM_REDUCTION_LAYERS + 1)]


def aux_head_input_size(image_size, num_cells):
  """Spatial size of the feature map the aux head reads (SAME stride-2 reductions)."""
  size = (image_size - 3) // 2 + 1  # stem conv, 3x3/2 VALID
  reductions_before_aux = NUM_STEM_CELLS + sum(
      1 for index in reduction_indices(num_cells)
      if index <= reduction_indices(num_cells)[1] - 1)
  for _ in range(reductions_before_aux):
    size = (size + 1) // 2
  return size


def drop_path_keep_prob(final_keep_prob, burn_in_steps):
  """Drop-path keep probability: 1 at step 0, linearly down to `final_keep_prob` at
  `burn_in_steps` (then constant); constant `final_keep_prob` when burn_in_steps is 0."""
  with tf.name_scope("drop_path"):
    keep_prob = tf.constant(final_keep_prob, tf.float32)
    if burn_in_steps:
      step = tf.cast(tf.train.get_or_create_global_step(), tf.float32)
      ratio = tf.minimum(1.0, step / float(burn_in_steps))
      keep_prob = 1.0 - ratio * (1.0 - keep_prob)
    return tf.identity(keep_prob, name="keep_prob")


def _channels(x):
  return int(x.shape[-1])


def _width(x):
  return int(x.shape[2])


class _Builder(object):
  """Holds the per-graph settings (training or not, BN and decay hparams, drop-path)."""

  def __init__(self, config, is_training):
    self.is_training = is_training
    self.batch_norm_decay = config["batch_norm_decay"]
    self.batch_norm_epsilon = config["batch_norm_epsilon"]
    # Eval graphs have no weight decay, as in the reference.
    self.weight_decay = config["weight_decay"] if is_training else 0.0
    self.drop_path_keep_prob = None
    if is_training and config["drop_connect_keep_prob"] < 1.0:
      self.drop_path_keep_prob = drop_path_keep_prob(config["drop_connect_keep_prob"],
                                                     config["train_steps"])

  def conv(self, x, filters, kernel_size, strides=1, padding="SAME", name="conv"):
    return layers.conv2d(x, filters, kernel_size, strides=strides, padding=padding,
                         weight_decay=self.weight_decay, name=name)

  def bn(self, x, name):
    return layers.batch_norm(x, self.is_training, decay=self.batch_norm_decay,
                             epsilon=self.batch_norm_epsilon, name=name)

  def drop_path(self, x):
    """Drops whole examples of a path (scaled by 1/keep_prob); training graph only."""
    if self.drop_path_keep_prob is None:
      return x
    keep_prob = self.drop_path_keep_prob
    noise = tf.random_uniform([tf.shape(x)[0], 1, 1, 1], dtype=x.dtype)
    return x / keep_prob * tf.floor(keep_prob + noise)

  def factorized_reduction(self, x, filters, stride):
    """Halves the spatial size without dropping pixels (two shifted 1x1/2 paths + BN)."""
    if stride == 1:
      x = self.conv(x, filters, 1, name="path_conv")
      return self.bn(x, "path_bn")
    if filters % 2:
      raise ValueError("factorized reduction needs an even number of filters, got %d"
                       % filters)
    path1 = self.conv(subsample(x, stride), filters // 2, 1, name="path1_conv")
    path2 = self.conv(subsample(x, stride, offset=1), filters // 2, 1, name="path2_conv")
    return self.bn(tf.concat([path1, path2], axis=3), "final_path_bn")


def subsample(x, stride, offset=0):
  """Pixels (offset + i * stride, offset + j * stride) of NHWC `x`, ceil(size / stride) of
  each, zero past the edge: the reference's 1x1 average pool of stride `stride` (offset
  0) and the same pool after `tf.pad(x, bottom/right 1)[:, 1:, 1:, :]` (offset 1), with
  the same values and gradients. Built from Pad, Reshape and Slice, whose gradients are
  cheap; the reference's AvgPoolGrad and StridedSliceGrad are slow generic CPU kernels
  (benchmarks/profile_amoeba_net.py)."""
  _, height, width, channels = x.shape.as_list()
  rows, columns = -(-height // stride), -(-width // stride)
  if (rows * stride, columns * stride) != (height, width):
    x = tf.pad(x, [[0, 0], [0, rows * stride - height], [0, columns * stride - width], [0, 0]])
  blocks = tf.reshape(x, [-1, rows, stride, columns, stride, channels])
  picked = tf.slice(blocks, [0, 0, offset, 0, offset, 0], [-1, -1, 1, -1, 1, -1])
  return tf.reshape(picked, [-1, rows, columns, channels])


class _Cell(object):
  """One AmoebaNet cell built from a CellSpec (network_utils.BaseCell semantics)."""

  def __init__(self, builder, spec, base_filters):
    self.builder = builder
    self.spec = spec
    self.base_filters = base_filters

  def __call__(self, net, scope, filter_scaling, stride, prev_layer):
    b = self.builder
    self.filters = int(self.base_filters * filter_scaling)
    with tf.variable_scope(scope):
      prev_layer = self._reduce_prev_layer(prev_layer, net)
      h0 = b.bn(b.conv(tf.nn.relu(net), self.filters, 1, name="1x1"), "beginning_bn")
      states = [h0, prev_layer]
      ops, indices = self.spec.operations, self.spec.hiddenstate_indices
      for iteration in range(len(ops) // 2):
        with tf.variable_scope("comb_iter_%d" % iteration):
          outputs = []
          for side, i in (("left", 2 * iteration), ("right", 2 * iteration + 1)):
            with tf.variable_scope(side):
              # Only ops reading the cell inputs (states 0 and 1) stride.
              op_stride = stride if indices[i] < 2 else 1
              outputs.append(self._apply_operation(states[indices[i]], ops[i], op_stride))
          states.append(outputs[0] + outputs[1])
      with tf.variable_scope("cell_output"):
        return self._combine_unused_states(states)

  def _reduce_prev_layer(self, prev_layer, curr_layer):
    """Brings the previous cell's output to the current input's width and F channels."""
    b = self.builder
    if prev_layer is None:
      return curr_layer
    if _width(prev_layer) != _width(curr_layer):
      return b.factorized_reduction(tf.nn.relu(prev_layer), self.filters, stride=2)
    if _channels(prev_layer) != self.filters:
      prev_layer = b.conv(tf.nn.relu(prev_layer), self.filters, 1, name="prev_1x1")
      return b.bn(prev_layer, "prev_bn")
    return prev_layer

  def _apply_operation(self, x, operation, stride):
    b = self.builder
    filters = self.filters
    input_filters = _channels(x)
    if operation in ("3x3", "1x7_7x1"):
      bottleneck = filters // 4
      if bottleneck < 1:
        x = self._conv_operation(tf.nn.relu(x), operation, stride, filters)
        x = b.bn(x, "bn")
      else:
        x = b.bn(b.conv(tf.nn.relu(x), bottleneck, 1, name="pre_1x1"), "pre_bn")
        x = self._conv_operation(tf.nn.relu(x), operation, stride, bottleneck)
        x = b.bn(x, "bn")
        x = b.bn(b.conv(tf.nn.relu(x), filters, 1, name="post_1x1"), "post_bn")
    elif operation in ("none", "1x1"):
      if stride > 1 or operation == "1x1" or input_filters != filters:
        x = b.conv(tf.nn.relu(x), filters, 1, strides=stride, name="1x1")
        x = b.bn(x, "bn_1")
    elif "pool" in operation:
      x = _pool(x, operation, stride)
      if input_filters != filters:
        x = b.bn(b.conv(x, filters, 1, name="1x1"), "bn_1")
    else:
      raise ValueError("unknown AmoebaNet operation %r" % operation)
    if operation != "none":
      x = b.drop_path(x)
    return x

  def _conv_operation(self, x, operation, stride, filters):
    b = self.builder
    if operation == "3x3":
      return b.conv(x, filters, 3, strides=stride, name="3x3")
    if stride != 1:
      raise ValueError("1x7_7x1 with stride %d is not supported (AmoebaNet-D only applies "
                       "it to in-cell states, which never stride)" % stride)
    x = b.conv(x, filters, (1, 7), name="1x7")
    x = tf.nn.relu(b.bn(x, "bn_1x7_7x1"))
    return b.conv(x, filters, (7, 1), name="7x1")

  def _combine_unused_states(self, states):
    """Concatenates the unused states, first reducing those whose shape differs."""
    used = self.spec.used_hiddenstates
    final_width, final_filters = _width(states[-1]), _channels(states[-1])
    combined = []
    for index, (state, is_used) in enumerate(zip(states, used)):
      if is_used:
        continue
      if _width(state) != final_width or _channels(state) != final_filters:
        stride = 2 if _width(state) != final_width else 1
        with tf.variable_scope("reduction_%d" % index):
          state = self.builder.factorized_reduction(state, final_filters, stride)
      combined.append(state)
    return tf.concat(combined, axis=3)


def _pool(x, operation, stride):
  """`max_pool_KxK` / `avg_pool_KxK`, SAME padding (avg excludes the padding)."""
  kind, _, shape = operation.split("_")
  size = int(shape.split("x")[0])
  window, strides = [1, size, size, 1], [1, stride, stride, 1]
  if kind == "max":
    return tf.nn.max_pool(x, window, strides, "SAME")
  if kind == "avg":
    return tf.nn.avg_pool(x, window, strides, "SAME")
  raise ValueError("unknown pooling %r" % operation)


def _aux_head(builder, net, num_classes, aux_scaling):
  with tf.variable_scope("aux_logits"):
    height, width = int(net.shape[1]), int(net.shape[2])
    if min(height, width) < AUX_POOL_SIZE:
      raise ValueError(
          "aux head input is %dx%d, smaller than its %dx%d pool: use a larger "
          "--image_size or --use_aux_head=false" % (height, width, AUX_POOL_SIZE,
                                                    AUX_POOL_SIZE))
    net = tf.nn.avg_pool(net, [1, AUX_POOL_SIZE, AUX_POOL_SIZE, 1],
                         [1, AUX_POOL_STRIDE, AUX_POOL_STRIDE, 1], "VALID")
    net = builder.conv(net, int(128 * aux_scaling), 1, name="proj")
    net = tf.nn.relu(builder.bn(net, "aux_bn0"))
    kernel = (int(net.shape[1]), int(net.shape[2]))
    net = builder.conv(net, int(768 * aux_scaling), kernel, padding="VALID", name="conv")
    net = tf.nn.relu(builder.bn(net, "aux_bn1"))
    net = tf.reshape(net, [-1, _channels(net)])
    return layers.dense(net, num_classes, kernel_initializer=_fc_initializer(),
                        weight_decay=builder.weight_decay, name="FC")


def _fc_initializer():
  return layers.variance_scaling(mode="fan_out")


def build(images, num_classes, is_training, config):
  """Builds AmoebaNet-D on NHWC float `images` (the slim-style network contract).

  `config`: a Mapping with num_cells, reduction_size, stem_reduction_size, use_aux_head,
  aux_scaling, dense_dropout_keep_prob, drop_connect_keep_prob, train_steps (the steps
  drop-path ramps over; 0: no ramp), batch_norm_decay, batch_norm_epsilon and
  weight_decay (training graph only).
  Returns (logits, end_points): float32 logits [batch, num_classes] and a dict with the
  output of every stage ("stem", "cell_stem_0", "cell_0", "reduction_cell_0", ...,
  "global_pool", "logits") plus "aux_logits" when the aux head is built (training graph
  with use_aux_head).
  """
  builder = _Builder(config, is_training)
  end_points = {}
  net, cell_outputs = _stem(builder, images, config, end_points)
  net = _cell_stacks(builder, net, cell_outputs, num_classes, config, end_points)
  with tf.variable_scope("final_layer"):
    net = tf.reduce_mean(tf.nn.relu(net), [1, 2])
    end_points["global_pool"] = net
    net = layers.dropout(net, 1.0 - config["dense_dropout_keep_prob"], is_training)
    logits = layers.dense(net, num_classes, kernel_initializer=_fc_initializer(),
                          weight_decay=builder.weight_decay, name="FC")
  end_points["logits"] = logits
  return logits, end_points


def _stem(builder, images, config, end_points):
  """The 3x3/2 stem convolution and the two stem (reduction) cells; returns the output
  and the list of cell outputs so far."""
  reduction_cell = _Cell(builder, REDUCTION_CELL, config["reduction_size"])
  with tf.variable_scope("stem"):
    net = builder.conv(images, config["stem_reduction_size"], 3, strides=2,
                       padding="VALID", name="conv0")
    net = builder.bn(net, "conv0_bn")
  end_points["stem"] = net
  cell_outputs = [None, net]
  filter_scaling = 1.0 / FILTER_SCALING_RATE ** NUM_STEM_CELLS
  for cell_num in range(NUM_STEM_CELLS):
    scope = "cell_stem_%d" % cell_num
    net = reduction_cell(net, scope, filter_scaling, 2, cell_outputs[-2])
    end_points[scope] = net
    cell_outputs.append(net)
    filter_scaling *= FILTER_SCALING_RATE
  return net, cell_outputs


def _cell_stacks(builder, net, cell_outputs, num_classes, config, end_points):
  """The normal cells, a reduction cell before each of reduction_indices, and the aux
  head (training graph) after the normal cell before the second reduction."""
  normal_cell = _Cell(builder, NORMAL_CELL, config["reduction_size"])
  reduction_cell = _Cell(builder, REDUCTION_CELL, config["reduction_size"])
  reductions = reduction_indices(config["num_cells"])
  filter_scaling = 1.0
  for cell_num in range(config["num_cells"]):
    if cell_num in reductions:
      filter_scaling *= FILTER_SCALING_RATE
      scope = "reduction_cell_%d" % reductions.index(cell_num)
      net = reduction_cell(net, scope, filter_scaling, 2, cell_outputs[-2])
      end_points[scope] = net
      cell_outputs.append(net)
    scope = "cell_%d" % cell_num
    net = normal_cell(net, scope, filter_scaling, 1, cell_outputs[-2])
    end_points[scope] = net
    if builder.is_training and config["use_aux_head"] and cell_num == reductions[1] - 1:
      with tf.variable_scope("aux_%d" % cell_num):
        end_points["aux_logits"] = _aux_head(builder, tf.nn.relu(net), num_classes,
                                             config["aux_scaling"])
    cell_outputs.append(net)
    tf.logging.debug("AmoebaNet %s: %s", scope, net.shape)
  return net


def count_float_ops_per_example(graph, batch_size):
  """Float ops of everything in `graph` per example (tf.profiler; needs static shapes)."""
  options = tf.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  total = tf.profiler.profile(graph, options=options).total_float_ops
  return total / float(batch_size)
