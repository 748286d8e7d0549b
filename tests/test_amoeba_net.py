"""AmoebaNet-D: exact parameter counts, cell shapes, schedules, training, EMA eval/export."""
import io
import math

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from estimators import layers
from estimators import registry
from estimators import run_loop
from estimators import schedules
from estimators.amoeba_net import AmoebaNet
from estimators.amoeba_net import model_fn as model_fn_lib
from estimators.amoeba_net import network
from migration import backend as backend_lib
from tests import conftest

if hasattr(tf, "disable_eager_execution"):
  tf.disable_eager_execution()

TINY_SIZE = 32
TINY_CLASSES = 10
TINY_BATCH = 8


def full_config(num_cells, **overrides):
  """The fields network.build reads (the eval graph drops the weight decay itself)."""
  config = dict(
      num_cells=num_cells, reduction_size=256, stem_reduction_size=32, use_aux_head=True,
      aux_scaling=0.4, dense_dropout_keep_prob=0.5, drop_connect_keep_prob=1.0,
      train_steps=0, batch_norm_decay=0.9, batch_norm_epsilon=1e-5, weight_decay=4e-5)
  config.update(overrides)
  return config


def tiny_params(**overrides):
  params = dict(
      num_cells=3, reduction_size=8, stem_reduction_size=8, image_size=TINY_SIZE,
      num_label_classes=TINY_CLASSES, num_epochs=1.0, num_train_images=1000,
      train_batch_size=TINY_BATCH, train_steps=100, lr=0.05, lr_decay_value=0.88,
      lr_decay_method="constant", lr_num_epochs_per_decay=1.0, lr_warmup_epochs=0.0,
      optimizer="momentum", momentum_rate=0.9, use_nesterov=False, weight_decay=4e-5,
      moving_average_decay=0.9, label_smoothing=0.1, use_aux_head=False, aux_scaling=0.4,
      dense_dropout_keep_prob=1.0, drop_connect_keep_prob=1.0, batch_norm_decay=0.9,
      batch_norm_epsilon=1e-5, gradient_clipping_by_global_norm=0.0,
      batch_size=TINY_BATCH)
  params.update(overrides)
  return params


def fixed_batch(seed=0, batch=TINY_BATCH, size=TINY_SIZE):
  rng = np.random.RandomState(seed)
  images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  labels = rng.randint(0, TINY_CLASSES, batch).astype(np.int32)
  return images, labels


def fixed_batch_input_fn(repeat):
  def input_fn(params):
    del params
    images, labels = fixed_batch()
    dataset = tf.data.Dataset.from_tensors((images, labels))
    return dataset.repeat() if repeat else dataset
  return input_fn


def estimator(model_dir, params):
  def fn(features, labels, mode, params):
    return model_fn_lib.model_fn(features, labels, mode, registry.Config(params))
  config = tf.estimator.RunConfig(tf_random_seed=1, save_checkpoints_steps=1000,
                                  save_summary_steps=1000)
  return tf.estimator.Estimator(fn, model_dir=str(model_dir), params=params, config=config)


# --- Parameter counts and float ops (models.md §1.5, measured on the reference) ----------

@pytest.mark.parametrize("num_cells,image_size,training,expected", [
    (6, 224, False, 46099177),
    (6, 224, True, 46763161),
    (12, 299, False, 84007145),
    (12, 299, True, 84812042),
])
def test_parameter_count_matches_reference(num_cells, image_size, training, expected):
  with tf.Graph().as_default():
    images = tf.placeholder(tf.float32, [1, image_size, image_size, 3])
    _, end_points = network.build(images, 1001, training, full_config(num_cells))
    assert layers.count_trainable_parameters() == expected
    assert ("aux_logits" in end_points) == training


def test_float_ops_match_reference_measurement():
  # The reference logs tf.profiler float ops of its training graph (batch 1): 11.70 G.
  with tf.Graph().as_default() as graph:
    images = tf.placeholder(tf.float32, [1, 224, 224, 3])
    network.build(images, 1001, True, full_config(6))
    flops = network.count_float_ops_per_example(graph, 1)
  assert flops == pytest.approx(11.70e9, rel=0.005)


def test_full_size_stage_shapes():
  with tf.Graph().as_default():
    images = tf.placeholder(tf.float32, [1, 224, 224, 3])
    _, end_points = network.build(images, 1001, False, full_config(6))
    shapes = {k: v.shape.as_list()[1:] for k, v in end_points.items()}
  assert shapes["stem"] == [111, 111, 32]
  assert shapes["cell_stem_0"] == [56, 56, 192]
  assert shapes["cell_stem_1"] == [28, 28, 384]
  assert shapes["cell_1"] == [28, 28, 1024]
  assert shapes["reduction_cell_0"] == [14, 14, 1536]
  assert shapes["cell_3"] == [14, 14, 2048]
  assert shapes["reduction_cell_1"] == [7, 7, 3072]
  assert shapes["cell_5"] == [7, 7, 4096]
  assert shapes["logits"] == [1001]


# --- Architecture at tiny sizes ---------------------------------------------------------

def test_reduction_placement():
  assert network.reduction_indices(6) == [2, 4]
  assert network.reduction_indices(12) == [4, 8]
  assert network.reduction_indices(18) == [6, 12]
  assert network.reduction_indices(3) == [1, 2]


def test_tiny_cell_output_channels():
  """Normal cells output 4F, reduction cells 3F; F doubles at each reduction."""
  config = full_config(3, reduction_size=8, stem_reduction_size=8)
  with tf.Graph().as_default():
    images = tf.placeholder(tf.float32, [2, 64, 64, 3])
    logits, end_points = network.build(images, TINY_CLASSES, False, config)
    shapes = {k: v.shape.as_list()[1:] for k, v in end_points.items()}
  assert shapes["stem"] == [31, 31, 8]
  assert shapes["cell_stem_0"] == [16, 16, 3 * 2]     # F/4 = 2
  assert shapes["cell_stem_1"] == [8, 8, 3 * 4]       # F/2 = 4
  assert shapes["cell_0"] == [8, 8, 4 * 8]
  assert shapes["reduction_cell_0"] == [4, 4, 3 * 16]
  assert shapes["cell_1"] == [4, 4, 4 * 16]
  assert shapes["reduction_cell_1"] == [2, 2, 3 * 32]
  assert shapes["cell_2"] == [2, 2, 4 * 32]
  assert shapes["global_pool"] == [4 * 32]
  assert logits.shape.as_list() == [2, TINY_CLASSES]
  assert "aux_logits" not in end_points


def test_aux_head_only_in_training_graph_and_size_check():
  config = full_config(3, reduction_size=8, stem_reduction_size=8)
  size = 72
  assert network.aux_head_input_size(size, 3) >= network.AUX_POOL_SIZE
  with tf.Graph().as_default():
    images = tf.placeholder(tf.float32, [2, size, size, 3])
    _, train_points = network.build(images, TINY_CLASSES, True, config)
  assert train_points["aux_logits"].shape.as_list() == [2, TINY_CLASSES]
  with tf.Graph().as_default():
    images = tf.placeholder(tf.float32, [2, TINY_SIZE, TINY_SIZE, 3])
    with pytest.raises(ValueError, match="aux head input"):
      network.build(images, TINY_CLASSES, True, config)


def test_drop_path_keep_prob_ramps_linearly():
  with tf.Graph().as_default():
    step = tf.train.get_or_create_global_step()
    keep = network.drop_path_keep_prob(0.6, 100)
    constant = network.drop_path_keep_prob(0.6, 0)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      values = []
      for value in (0, 50, 100, 400):
        sess.run(step.assign(value))
        values.append(sess.run(keep))
      assert values == pytest.approx([1.0, 0.8, 0.6, 0.6])
      assert sess.run(constant) == pytest.approx(0.6)


def test_drop_path_drops_whole_examples_in_training_only():
  config = full_config(
      3, reduction_size=8, stem_reduction_size=8, use_aux_head=False,
      drop_connect_keep_prob=0.5, dense_dropout_keep_prob=1.0)
  images, _ = fixed_batch(batch=16)
  with tf.Graph().as_default():
    tf.set_random_seed(0)
    logits, _ = network.build(tf.constant(images), TINY_CLASSES, True, config)
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      first, second = sess.run(logits), sess.run(logits)
  assert not np.allclose(first, second)  # random paths dropped per run


# --- Learning-rate schedules ------------------------------------------------------------

def lr_values(steps, **kwargs):
  with tf.Graph().as_default():
    step = tf.placeholder(tf.int64, [])
    lr = schedules.learning_rate(step, **kwargs)
    with tf.Session() as sess:
      return [float(sess.run(lr, {step: s})) for s in steps]


def test_exponential_staircase_with_warmup_and_floor():
  values = lr_values([0, 10, 35, 99, 100, 250, 10 ** 6], method="exponential", base_lr=2.56,
                     decay_steps=100, decay_rate=0.88, staircase=True, warmup_steps=35,
                     min_lr=2.56e-4)
  assert values == pytest.approx(
      [2.56e-4, 2.56 * 10 / 35, 2.56, 2.56, 2.56 * 0.88, 2.56 * 0.88 ** 2, 2.56e-4],
      rel=1e-5)


def test_exponential_smooth():
  values = lr_values([150], method="exponential", base_lr=1.0, decay_steps=100,
                     decay_rate=0.5, staircase=False)
  assert values == pytest.approx([0.5 ** 1.5], rel=1e-6)


def test_cosine_constant_and_piecewise():
  assert lr_values([0, 50, 100, 150], method="cosine", base_lr=1.0, total_steps=100) == \
      pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-6)
  assert lr_values([0, 10 ** 6], method="constant", base_lr=0.3) == pytest.approx([0.3, 0.3])
  expected = [1.0, 1.0, 0.5, 0.5, 0.25]
  steps = [0, 10, 11, 20, 21]
  assert lr_values(steps, method="piecewise", base_lr=9.0, boundaries=[10, 20],
                   values=[1.0, 0.5, 0.25]) == pytest.approx(expected)
  assert lr_values(steps, method="stepwise", base_lr=2.0, boundaries=[10, 20],
                   factors=[0.5, 0.25, 0.125]) == pytest.approx(expected)


def test_linear_warmup_on_cosine():
  assert lr_values([0, 5, 10], method="cosine", base_lr=1.0, total_steps=1000,
                   warmup_steps=10) == pytest.approx(
                       [0.0, 0.5, 0.5 * (1 + math.cos(math.pi * 0.01))], rel=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="linear"), "not one of"),
    (dict(method="exponential", decay_rate=0.9), "decay_steps"),
    (dict(method="cosine"), "total_steps"),
    (dict(method="piecewise", boundaries=[1], values=[1.0, 2.0], factors=[1.0, 2.0]),
     "exactly one"),
    (dict(method="piecewise", boundaries=[1, 2], values=[1.0, 2.0]), "len"),
    (dict(method="piecewise", boundaries=[5, 2], values=[1.0, 2.0, 3.0]), "increase"),
])
def test_schedule_errors(kwargs, match):
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match=match):
      schedules.learning_rate(tf.constant(0), base_lr=1.0, **kwargs)


def test_reference_schedule_huawei_numbers():
  """Batch 64: 20,018 steps/epoch, 7,006 warm-up steps, x0.88 per epoch, floor 2.56e-4."""
  params = tiny_params(lr=2.56, lr_decay_method="exponential", lr_decay_value=0.88,
                       lr_warmup_epochs=0.35, num_train_images=1281167, train_batch_size=64)
  with tf.Graph().as_default():
    step = tf.placeholder(tf.int64, [])
    lr = model_fn_lib.learning_rate(params, step)
    with tf.Session() as sess:
      values = [float(sess.run(lr, {step: s})) for s in (0, 7005, 7006, 20017, 20018, 40036)]
  assert values == pytest.approx(
      [2.56e-4, 2.56 * 7005 / 7006, 2.56, 2.56, 2.56 * 0.88, 2.56 * 0.88 ** 2], rel=1e-5)


def test_stepwise_and_cosine_reference_schedules_build():
  """The reference's stepwise branch asserted (stepwise_epoch was never passed); fixed."""
  params = tiny_params(lr=1.0, num_train_images=100, train_batch_size=10, num_epochs=4.0)
  with tf.Graph().as_default():
    step = tf.placeholder(tf.int64, [])
    stepwise = model_fn_lib.learning_rate(dict(params, lr_decay_method="stepwise"), step)
    cosine = model_fn_lib.learning_rate(dict(params, lr_decay_method="cosine"), step)
    with tf.Session() as sess:
      assert [float(sess.run(stepwise, {step: s})) for s in (100, 101, 201)] == \
          pytest.approx([1.0, 0.1, 0.01])
      assert [float(sess.run(cosine, {step: s})) for s in (0, 20, 40)] == \
          pytest.approx([1.0, 0.5, 1e-4], abs=1e-6)   # 40 steps in all; floor 1e-4 * lr


def test_graph_is_nhwc_without_layout_transposes():
  """The Ascend port kept the TPU HWCN transpose of the batch; this port feeds NHWC."""
  images, labels = fixed_batch()
  with tf.Graph().as_default() as graph:
    model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                          tf.estimator.ModeKeys.EVAL, tiny_params())
    assert not [op.name for op in graph.get_operations() if op.type == "Transpose"]


def test_only_the_update_waits_for_batch_norm_statistics():
  """Gradient ops built under control_dependencies(UPDATE_OPS) each carried one control
  input per BN statistic: 60 % of the GraphDef, every .meta and the events file."""
  images, labels = fixed_batch()
  with tf.Graph().as_default() as graph:
    tf.train.get_or_create_global_step()
    model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                          tf.estimator.ModeKeys.TRAIN, tiny_params())
    update_ops = {getattr(update, "op", update).name  # ops or their output tensors
                  for update in graph.get_collection(tf.GraphKeys.UPDATE_OPS)}
    assert update_ops
    waiting = [op.name for op in graph.get_operations()
               if {c.name for c in op.control_inputs} & update_ops]
    assert waiting and all(not name.startswith("gradients/") for name in waiting), waiting[:5]


@pytest.mark.parametrize("height,width", [(6, 4), (5, 7)])
def test_subsample_matches_the_reference_pools_without_their_slow_gradients(height, width):
  """factorized_reduction's two paths: the reference's 1x1/2 average pool of x and of x
  shifted up-left (tf.pad(x)[:, 1:, 1:, :]) differentiate through AvgPoolGrad and
  StridedSliceGrad (slow on CPU); subsample gives the same values and gradients, for even
  and odd sizes."""
  rng = np.random.RandomState(0)
  x_value = rng.randn(2, height, width, 3).astype(np.float32)
  with tf.Graph().as_default() as graph:
    x = tf.constant(x_value)
    pool = lambda t: tf.nn.avg_pool(t, [1, 1, 1, 1], [1, 2, 2, 1], "VALID")
    references = [pool(x), pool(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :])]
    ours = [network.subsample(x, 2), network.subsample(x, 2, offset=1)]
    weights = [tf.constant(rng.randn(*out.shape.as_list()).astype(np.float32))
               for out in references]
    values, gradient_types = [], set()
    for outputs in (references, ours):
      before = set(graph.get_operations())
      gradient, = tf.gradients([out * w for out, w in zip(outputs, weights)], x)
      gradient_types = {op.type for op in set(graph.get_operations()) - before}
      values.append(outputs + [gradient])
    with tf.Session() as sess:
      values = sess.run(values)
  for reference_value, our_value in zip(*values):
    np.testing.assert_array_equal(reference_value, our_value)
  assert not gradient_types & {"AvgPoolGrad", "StridedSliceGrad"}, gradient_types


# --- Flags, steps and validation --------------------------------------------------------

def configured(*argv):
  """The run's Config from amoeba_net.py's flags `argv`: the table's ranges, then
  configure() (the data checks left out)."""
  model, flag_values = run_loop.parse_flags(
      "amoeba_net", ["--model_dir=/tmp/unused", "--data_dir=/data"] + list(argv))
  registry.check_ranges(model.flags, flag_values)
  return model.configure(flag_values,
                         run_loop.run_values(flag_values, backend_lib.Backend("cpu")))


def test_defaults_and_step_counts():
  config = configured()
  assert config.train_batch_size == 64 and config.optimizer == "rmsprop"
  assert config.train_steps == 700665      # 35 * ceil(1281167 / 64)
  assert config.eval_steps == 781          # 50000 // 64
  assert config.steps_per_eval == 20019
  assert configured("--train_steps=7").train_steps == 7
  assert config.num_epochs == 35 and config.eval_batch_size == 64
  assert config.class_names is None        # /data has no labels.txt


def test_epochs_are_the_run_loops_train_epochs_with_the_seed_name_kept():
  assert run_loop.FLAGS["train_epochs"].default == 35   # the seed's default, as --train_epochs
  assert configured("--num_epochs=2").train_steps == 2 * 20019
  half = configured("--train_epochs=0.5", "--num_train_images=1000", "--train_batch_size=10")
  assert half.steps_per_eval == 100 and half.train_steps == 50   # an epoch is 100 steps
  assert configured("--num_epochs=2").num_epochs == 2


def test_explicit_steps_and_class_names(tmp_path):
  config = configured("--steps_per_eval=5", "--eval_steps=3")
  assert (config.steps_per_eval, config.eval_steps) == (5, 3)
  (tmp_path / "labels.txt").write_text(u"cat\ndog\n")
  config = configured("--data_dir=%s" % tmp_path, "--num_label_classes=4")
  assert config.class_names == ["", "cat", "dog", ""]
  assert configured("--use_synthetic_data", "--data_dir=").class_names is None


@pytest.mark.parametrize("argv,match", [
    (["--use_tpu"], "use_tpu"),
    (["--reduction_size=12"], "reduction_size"),
    (["--reduction_size=0"], "reduction_size"),
    (["--image_size=32"], "aux head"),
    (["--dense_dropout_keep_prob=0"], "dense_dropout_keep_prob"),
    (["--moving_average_decay=1"], "moving_average_decay"),
    (["--aux_scaling=0.005"], "aux_scaling"),
    (["--num_train_images=10"], "num_train_images"),
    (["--num_eval_images=10"], "num_eval_images"),
    (["--data_dir="], "data_dir"),
])
def test_bad_flags_are_named(argv, match):
  with pytest.raises(ValueError, match=match):
    configured(*argv)


def test_small_images_pass_without_aux_head():
  configured("--image_size=32", "--use_aux_head=false")


def test_fixed_batch_shapes_keep_the_predict_batches_static(digits_dir):
  config = configured("--data_dir=" + digits_dir, "--image_size=%d" % TINY_SIZE,
                      "--num_label_classes=11", "--use_aux_head=false")
  assert config.class_names[1:] == [str(digit) for digit in range(10)]
  for fixed, batch_dim in ((False, None), (True, TINY_BATCH)):
    input_fn = AmoebaNet().input_fn(config.replace(fixed_batch_shapes=fixed),
                                    tf.estimator.ModeKeys.PREDICT)
    with tf.Graph().as_default():
      shapes = tf.data.get_output_shapes(input_fn({"batch_size": TINY_BATCH}))
    assert shapes["image"].as_list()[0] == batch_dim


# --- Training, EMA evaluation and export ------------------------------------------------

class _LossRecorder(tf.train.SessionRunHook):

  def __init__(self):
    self.losses = []

  def begin(self):
    self._loss = tf.get_default_graph().get_tensor_by_name(
        model_fn_lib.TOTAL_LOSS_NAME + ":0")

  def before_run(self, run_context):
    return tf.train.SessionRunArgs(self._loss)

  def after_run(self, run_context, run_values):
    self.losses.append(run_values.results)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny AmoebaNet trained 20 steps on one fixed batch (EMA decay 0.9)."""
  model_dir = tmp_path_factory.mktemp("amoeba_tiny")
  params = tiny_params()
  est = estimator(model_dir, params)
  recorder = _LossRecorder()
  est.train(fixed_batch_input_fn(repeat=True), steps=20, hooks=[recorder])
  return est, params, recorder.losses


def test_training_decreases_loss_on_fixed_batch(trained):
  _, _, losses = trained
  assert len(losses) == 20 and all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.fixture(scope="module")
def checkpoint_outputs(trained):
  """Eval loss and logits of the checkpoint with raw and with hand-loaded EMA weights."""
  est, params, _ = trained
  checkpoint = est.latest_checkpoint()
  images, labels = fixed_batch()
  outputs = {}
  with tf.Graph().as_default() as graph:
    tf.train.get_or_create_global_step()
    spec = model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                                 tf.estimator.ModeKeys.EVAL, params)
    logits = graph.get_tensor_by_name("final_layer/FC/BiasAdd:0")
    shadows = {var.op.name + "/ExponentialMovingAverage": var
               for var in tf.trainable_variables() + tf.global_variables()
               if var.trainable or var.op.name.endswith(("moving_mean", "moving_variance"))}
    with tf.Session() as sess:
      tf.train.Saver().restore(sess, checkpoint)
      outputs["raw"] = sess.run([spec.loss, logits])
      tf.train.Saver(shadows).restore(sess, checkpoint)
      outputs["ema"] = sess.run([spec.loss, logits])
  return outputs


def test_evaluation_uses_ema_weights(trained, checkpoint_outputs):
  est, _, _ = trained
  results = est.evaluate(fixed_batch_input_fn(repeat=False), steps=1)
  ema_loss, raw_loss = checkpoint_outputs["ema"][0], checkpoint_outputs["raw"][0]
  assert results["loss"] == pytest.approx(ema_loss, rel=1e-4)
  assert abs(ema_loss - raw_loss) > 1e-3
  assert set(results) >= {"loss", "top_1_accuracy", "top_5_accuracy", "global_step"}


def test_prediction_uses_ema_weights(trained, checkpoint_outputs):
  est, _, _ = trained
  predictions = list(est.predict(lambda params: tf.data.Dataset.from_tensors(fixed_batch()[0])))
  logits = np.stack([p["logits"] for p in predictions])
  np.testing.assert_allclose(logits, checkpoint_outputs["ema"][1], rtol=1e-4, atol=1e-4)
  assert np.abs(logits - checkpoint_outputs["raw"][1]).max() > 1e-2
  probabilities = np.stack([p["probabilities"] for p in predictions])
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert [p["classes"] for p in predictions] == list(np.argmax(logits, axis=1))


def _jpeg_bytes(seed):
  rng = np.random.RandomState(seed)
  pixels = rng.randint(0, 256, (40, 48, 3)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG")
  return buffer.getvalue()


def test_saved_model_takes_jpeg_and_carries_ema_weights(trained, tmp_path):
  from preprocessing import inception  # pylint: disable=g-import-not-at-top
  est, params, _ = trained
  config = configured("--image_size=%d" % TINY_SIZE, "--use_aux_head=false")
  export_dir = est.export_saved_model(
      str(tmp_path), AmoebaNet().serving_input_receiver_fn(config))
  jpegs = [_jpeg_bytes(seed) for seed in range(3)]
  with tf.Graph().as_default():
    with tf.Session() as sess:
      meta_graph = tf.saved_model.loader.load(sess, ["serve"], export_dir)
      signature = meta_graph.signature_def["serving_default"]
      served = sess.run(signature.outputs["logits"].name,
                        {signature.inputs["image_bytes"].name: jpegs})

  def input_fn(params):
    del params
    dataset = tf.data.Dataset.from_tensor_slices(jpegs).map(
        lambda data: inception.preprocess_image(data, False, TINY_SIZE))
    return dataset.batch(len(jpegs))

  expected = np.stack([p["logits"] for p in est.predict(input_fn)])
  np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


def test_a_tiny_synthetic_run_trains_evaluates_and_summarizes(tmp_path, capsys):
  runner = run_loop.prepare("amoeba_net", [
      "--model_dir=%s" % (tmp_path / "run"), "--use_synthetic_data", "--device=cpu",
      "--mode=train_and_eval", "--train_steps=2", "--eval_steps=1", "--train_batch_size=4",
      "--eval_batch_size=4", "--num_cells=3", "--reduction_size=8",
      "--stem_reduction_size=8", "--image_size=%d" % TINY_SIZE, "--use_aux_head=false",
      "--num_train_images=8", "--num_label_classes=%d" % TINY_CLASSES])
  assert runner.config.steps_per_eval == 2 and runner.config.class_names is None
  metrics = runner.run()
  assert metrics["global_step"] == 2 and "top_1_accuracy" in metrics
  assert "AmoebaNet-D eval at global step 2: top-1 " in capsys.readouterr().out


def test_learning_rate_summary_is_tagged_learning_rate():
  with tf.Graph().as_default() as graph:
    images, labels = fixed_batch()
    model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                          tf.estimator.ModeKeys.TRAIN, tiny_params())
    assert "learning_rate" in conftest.scalar_summary_tags(graph)


def test_model_fn_trains_with_aux_head_clipping_and_drop_path():
  images, labels = fixed_batch(batch=4, size=72)
  params = tiny_params(image_size=72, use_aux_head=True, optimizer="rmsprop",
                       gradient_clipping_by_global_norm=1.0, drop_connect_keep_prob=0.7,
                       lr_decay_method="exponential", lr_warmup_epochs=0.5, batch_size=4)
  with tf.Graph().as_default() as graph:
    global_step = tf.train.get_or_create_global_step()
    spec = model_fn_lib.model_fn(tf.constant(images), tf.constant(labels),
                                 tf.estimator.ModeKeys.TRAIN, params)
    aux = graph.get_tensor_by_name("aux_1/aux_logits/FC/BiasAdd:0")
    assert aux.shape.as_list() == [4, TINY_CLASSES]
    aux_loss = [op for op in graph.get_operations() if op.name == "losses/aux_loss"]
    assert aux_loss, "aux loss summary missing"
    keep_prob = graph.get_tensor_by_name("drop_path/keep_prob:0")
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      sess.run(global_step.assign(params["train_steps"] // 2))
      assert sess.run(keep_prob) == pytest.approx(0.85)   # halfway from 1.0 to 0.7
      sess.run(global_step.assign(0))
      for _ in range(2):
        loss, _ = sess.run([spec.loss, spec.train_op])
        assert np.isfinite(loss)
      assert sess.run(global_step) == 2


@pytest.mark.parametrize("name,expected_type", [
    ("sgd", tf.train.GradientDescentOptimizer),
    ("momentum", tf.train.MomentumOptimizer),
    ("rmsprop", tf.train.RMSPropOptimizer),
])
def test_build_optimizer(name, expected_type):
  # pylint: disable=protected-access,unidiomatic-typecheck
  optimizer = model_fn_lib.build_optimizer(tiny_params(optimizer=name, use_nesterov=True), 0.1)
  assert type(optimizer) is expected_type
  if name == "momentum":
    assert optimizer._use_nesterov and optimizer._momentum == 0.9
  if name == "rmsprop":
    assert (optimizer._decay, optimizer._momentum, optimizer._epsilon) == (0.9, 0.9, 1.0)


def test_apply_ema_matches_exponential_moving_average():
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    var = tf.get_variable("w", [3], initializer=tf.random_normal_initializer())
    shadow_name = tf.train.ExponentialMovingAverage(0.9).average_name(var)  # what eval reads
    update = model_fn_lib.apply_ema(0.9, global_step, [var])
    shadow = [v for v in tf.global_variables() if v.op.name == shadow_name]
    assert len(shadow) == 1 and not shadow[0].trainable
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      initial = sess.run(var)
      np.testing.assert_array_equal(sess.run(shadow[0]), initial)
      for step, decay in ((0, 0.1), (100, 0.9)):   # min(0.9, (1 + step) / (10 + step))
        sess.run(global_step.assign(step))
        before = sess.run(shadow[0])
        new_value = sess.run(var.assign(initial + 1.0 + step))
        sess.run(update)
        np.testing.assert_allclose(sess.run(shadow[0]),
                                   decay * before + (1 - decay) * new_value, rtol=1e-5)
