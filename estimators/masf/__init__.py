"""MASF (Dou et al., NeurIPS 2019) on PACS with AlexNet, as a registered Estimator model.

Leave-one-domain-out: train on the three source domains' train lists, episodically (two
meta-train domains + one meta-test domain drawn at random each step), test on the held-out
--target_domain's full list (<target>_test_kfold.txt). --algorithm=deepall trains the same
network with plain cross-entropy on the pooled sources (the paper's baseline).

Seed (Huawei ModelZoo) flags and how they map here:
  --train_iterations    alias of the run loop's --train_steps (default 300, the port's value;
                        the last one given wins); --train_epochs counts epochs of the three
                        source domains' training images instead
  --meta_batch_size     images per domain per step; one step's batch is 3 x meta_batch_size, so
                        --train_batch_size follows it (setting it to anything else is an error)
  --dataroot            PACS root (kfold/ + splits/), read directly when --data_dir is empty
                        or is itself a PACS root
                        (default: <data root>/pacs, input_fns.data_root()); --data_dir
                        instead points at tfrecords built by
                        `python -m tools.build_pacs_tfrecords`
  --weights_path        bvlc_alexnet.npy (read without executing its pickle) or its .npz
                        conversion; empty = from scratch. Fully checked before the graph is
                        built (estimators/masf/weights.py); the run logs which one was used.
  summary/print/test_print_interval -> the run loop's --log_step_count_steps and its
                        evaluation cadence; filelist_root -> the official lists under splits/.

Model selection: evaluation reports accuracy/<domain> for every domain it reads (sources on
their crossval lists, the target on its test list), source_crossval_accuracy, target_accuracy,
and `accuracy`, the metric to select checkpoints on: the sources' crossval accuracy by
default. --select_on_target_accuracy restores the original protocol (best target accuracy),
which tunes on the test domain and overstates generalisation. The figure a run is judged
by (its headline, as the seed and the paper report it) is target_accuracy.
"""
import os

import tensorflow.compat.v1 as tf

from estimators import registry
from estimators.masf import model_fn as masf_model_fn
from estimators.masf import network
from estimators.masf import weights as weights_lib
from input_fns import pacs
from preprocessing import alexnet as alexnet_preprocessing

# MASF paper Table 2 (AlexNet, ImageNet-pretrained), target-domain accuracy in %.
PUBLISHED_MASF = {"art_painting": 70.35, "cartoon": 72.46, "photo": 90.68, "sketch": 67.33}
PUBLISHED_DEEPALL = {"art_painting": 67.60, "cartoon": 68.87, "photo": 89.20, "sketch": 61.13}
REFERENCE_TRAIN_ITERATIONS = 300
DEFAULT_META_BATCH_SIZE = 126
DEFAULT_EVAL_BATCH_SIZE = 100


def source_domains(target_domain):
  return tuple(d for d in pacs.DOMAINS if d != target_domain)


def domain_accuracies(eval_results):
  """{domain: accuracy} for the domains an evaluate() result actually saw."""
  return dict((d, float(eval_results["accuracy/" + d])) for d in pacs.DOMAINS
              if eval_results.get("examples/" + d, 0) > 0)


def format_domain_table(accuracies, reference=None, title="PACS accuracy (%)"):
  """Markdown table: one row per domain (in PACS order) + the average; accuracies in [0, 1].

  For the leave-one-domain-out protocol pass {target: target_accuracy} of the four runs;
  `reference` (e.g. PUBLISHED_MASF, in %) adds a column and its average over the same rows.
  """
  rows = [d for d in pacs.DOMAINS if d in accuracies]
  header = "| domain | accuracy |" + (" reference |" if reference else "")
  lines = [title, "", header, "|---|---|" + ("---|" if reference else "")]

  def _row(name, value, ref):
    cell = "| %s | %.2f |" % (name, 100.0 * value)
    if reference:
      cell += " %s |" % ("%.2f" % ref if ref is not None else "-")
    return cell

  for d in rows:
    lines.append(_row(d, accuracies[d], reference.get(d) if reference else None))
  if rows:
    average_ref = None
    if reference and all(d in reference for d in rows):
      average_ref = sum(reference[d] for d in rows) / len(rows)
    lines.append(_row("average", sum(accuracies[d] for d in rows) / len(rows), average_ref))
  return "\n".join(lines)


def _check_batch_and_weights(flag_values):
  """The checks across flags: the episode sets the batch; weights need AlexNet's shapes."""
  episode = 3 * flag_values.meta_batch_size
  registry.require(
      not registry.flag_given(flag_values, "train_batch_size") or
      flag_values.train_batch_size == episode,
      "--train_batch_size=%d: MASF's batch is 3 x --meta_batch_size = %d; set "
      "--meta_batch_size only" % (flag_values.train_batch_size, episode))
  path = flag_values.weights_path
  if path:
    registry.require(tf.io.gfile.exists(path), "--weights_path=%s does not exist" % path)
    registry.require(
        flag_values.image_size == network.REFERENCE_IMAGE_SIZE and
        flag_values.fc_units == network.FC_UNITS,
        "--weights_path needs --image_size=%d and --fc_units=%d (AlexNet's fc6 is 9216 x "
        "4096), got %d and %d" % (network.REFERENCE_IMAGE_SIZE, network.FC_UNITS,
                                  flag_values.image_size, flag_values.fc_units))


def _source(config):
  return pacs.PacsSource(data_dir=config.data_dir, dataroot=config.dataroot,
                         skip_bad_lines=config.skip_bad_list_lines)


def train_examples(config):
  """The source domains' training images (the builder's summary counts with --data_dir)."""
  source = _source(config)
  return sum(source.count(d, "train") for d in config.source_domains)


def _lists(config, mode):
  """The (domain, split) lists `mode` reads."""
  return {tf.estimator.ModeKeys.TRAIN: config.train_lists,
          tf.estimator.ModeKeys.EVAL: config.eval_lists,
          tf.estimator.ModeKeys.PREDICT: config.predict_lists}[mode]


def _train_input_fn(config):
  source = _source(config)
  episode = config.train_batch_size

  def train_input_fn(params):
    if params.get("batch_size", episode) != episode:
      raise ValueError("batch_size %d != 3 x --meta_batch_size = %d"
                       % (params["batch_size"], episode))
    return pacs.episode_dataset(source, config.source_domains, config.meta_batch_size,
                                config.image_size, config.flip_probability,
                                config.cache_decoded_images)
  return train_input_fn


def _eval_input_fn(config, lists):
  source = _source(config)

  def eval_input_fn(params):
    return pacs.eval_dataset(source, lists, config.image_size, params["batch_size"])
  return eval_input_fn


def _predict_input_fn(config):
  source = _source(config)

  def predict_input_fn(params):
    return pacs.predict_dataset(source, config.predict_lists, config.image_size,
                                params["batch_size"])
  return predict_input_fn


@registry.register
class Masf(registry.Model):
  """MASF / DeepAll on PACS (see the module docstring)."""

  name = "masf"
  single_device_only = ("a step is one meta-learning episode whose updates come from "
                        "tf.gradients through the fast weights and a triplet loss over the "
                        "whole episode: they do not average over replicas")
  headline_metric = ("target_accuracy", "accuracy on the held-out --target_domain's test "
                     "list (what the seed and the paper report)")
  flags = (
      registry.Flag("algorithm", "enum", masf_model_fn.MASF,
                    "masf: meta-learning with global + local losses; deepall: cross-entropy "
                    "on the pooled source domains (baseline).", masf_model_fn.ALGORITHMS),
      registry.Flag("target_domain", "enum", "cartoon",
                    "Held-out PACS domain; the other three are the sources.", pacs.DOMAINS),
      registry.Flag("dataroot", "string", "",
                    "PACS root holding kfold/ and splits/ (default $DATA_ROOT/pacs, else "
                    "../shared/data/pacs); read when --data_dir is empty."),
      registry.Flag("skip_bad_list_lines", "bool", True,
                    "Drop bad split-list lines (bad label, duplicate, missing image), naming "
                    "each in a warning; --noskip_bad_list_lines fails instead."),
      registry.Flag("meta_batch_size", "integer", DEFAULT_META_BATCH_SIZE,
                    "Images per source domain per step; at least 3 (the triplet group takes "
                    "meta_batch_size//3 images of each domain).", registry.at_least(3)),
      registry.Flag("inner_lr", "float", 1e-5, "Inner-loop (fast weights) SGD step.",
                    registry.POSITIVE),
      registry.Flag("outer_lr", "float", 1e-5, "Adam rate of the task and meta steps.",
                    registry.POSITIVE),
      registry.Flag("metric_lr", "float", 1e-5, "Adam rate of the metric-net step.",
                    registry.POSITIVE),
      registry.Flag("margin", "float", 10.0, "Triplet margin (squared distances).",
                    registry.NON_NEGATIVE),
      registry.Flag("gradients_clip_value", "float", 2.0,
                    "Per-tensor clip_by_norm of the inner and meta gradients.",
                    registry.POSITIVE),
      registry.Flag("global_loss_weight", "float", 1.0,
                    "Weight of the global (class alignment) loss; 0 disables it (ablation).",
                    registry.NON_NEGATIVE),
      registry.Flag("local_loss_weight", "float", 0.005,
                    "Weight of the local (triplet) loss in the meta and metric steps; 0 "
                    "disables it (ablation).", registry.NON_NEGATIVE),
      registry.Flag("meta_step_updates_metric_net", "bool", True,
                    "Reference quirk: the meta Adam also updates model/metric/* (so it gets "
                    "two updates a step). False: only the metric Adam does."),
      registry.Flag("num_classes", "integer", pacs.NUM_CLASSES, "Classes (PACS: 7).",
                    registry.within(pacs.NUM_CLASSES, pacs.NUM_CLASSES)),
      registry.Flag("weights_path", "string", "",
                    "bvlc_alexnet.npy or its .npz conversion (conv1..fc7); empty: train from "
                    "scratch."),
      registry.Flag("image_size", "integer", network.REFERENCE_IMAGE_SIZE,
                    "Input side; 227 gives AlexNet's fc6 fan-in 9216 (tests use less).",
                    registry.at_least(network.min_image_size())),
      registry.Flag("fc_units", "integer", network.FC_UNITS,
                    "Width of fc6/fc7 (4096 = AlexNet; tests shrink it).",
                    registry.at_least(1)),
      registry.Flag("flip_probability", "float",
                    alexnet_preprocessing.REFERENCE_FLIP_PROBABILITY,
                    "Random left-right flip probability in training (reference: 0.5 x 0.25 "
                    "x 0.5).", registry.within(0.0, 1.0)),
      registry.Flag("cache_decoded_images", "bool", True,
                    "Decode each training image once and keep it (uint8) in memory: about "
                    "1 GB for three source domains at 227x227."),
      registry.Flag("select_on_target_accuracy", "bool", False,
                    "ORIGINAL PROTOCOL, leaks the test domain: make `accuracy` (the "
                    "model-selection metric) the target's test accuracy instead of the "
                    "sources' crossval accuracy."),
  )
  run_flag_defaults = {"train_steps": REFERENCE_TRAIN_ITERATIONS,
                       "train_batch_size": 3 * DEFAULT_META_BATCH_SIZE,
                       "eval_batch_size": DEFAULT_EVAL_BATCH_SIZE}
  run_flag_aliases = {"train_iterations": "train_steps"}

  def configure(self, flag_values, run):
    """The flags as given, plus what they resolve to: the episode batch, the data read
    (--data_dir, else --dataroot or its default), the lists each mode reads, the steps."""
    _check_batch_and_weights(flag_values)
    target = flag_values.target_domain
    sources = source_domains(target)
    config = run.replace(**registry.values_of(self.flags, flag_values))
    data_dir, dataroot = run.data_dir or None, flag_values.dataroot or pacs.default_dataroot()
    if data_dir and os.path.isdir(os.path.join(data_dir, "kfold")):
      data_dir, dataroot = None, data_dir  # a PACS root itself (the launchers' --data_path)
    config = config.replace(
        train_batch_size=3 * flag_values.meta_batch_size,  # one episode
        data_dir=data_dir,
        dataroot=dataroot,
        source_domains=sources,
        train_lists=tuple((d, "train") for d in sources),
        eval_lists=tuple((d, "crossval") for d in sources) + ((target, "test"),),
        predict_lists=((target, "test"),))
    return config.replace(train_steps=registry.train_steps(
        flag_values, lambda: train_examples(config) / float(config.train_batch_size),
        REFERENCE_TRAIN_ITERATIONS))

  def check_inputs(self, config):
    source = _source(config)
    for domain in config.source_domains:
      if source.count(domain, "train") < config.meta_batch_size:
        raise ValueError("--meta_batch_size=%d exceeds the %d images of %s's train list"
                         % (config.meta_batch_size, source.count(domain, "train"), domain))
    source.check(config.eval_lists)
    if config.weights_path:
      weights_lib.check(config.weights_path, config.image_size, config.fc_units)

  def model_fn(self, features, labels, mode, config):
    return masf_model_fn.model_fn(features, labels, mode, config)

  def input_fn(self, config, mode):
    if mode == tf.estimator.ModeKeys.TRAIN:
      input_fn = _train_input_fn(config)
    elif mode == tf.estimator.ModeKeys.EVAL:
      input_fn = _eval_input_fn(config, config.eval_lists)
    else:
      input_fn = _predict_input_fn(config)
    # The TFRecords it reads (none from image folders), so that a record found corrupt
    # while running is named (run_loop).
    input_fn.files = ([pacs.tfrecord_path(config.data_dir, d, s)
                       for d, s in _lists(config, mode)] if config.data_dir else [])
    return input_fn

  def domain_eval_input_fn(self, config, domain, split="test"):
    """Eval input_fn over one domain's list (e.g. for a per-domain accuracy table)."""
    _source(config).check([(domain, split)])
    return _eval_input_fn(config, [(domain, split)])

  def serving_input_receiver_fn(self, config):
    size = config.image_size

    def receiver_fn():
      images = tf.placeholder(tf.float32, [None, size, size, 3], name="images")
      return tf.estimator.export.ServingInputReceiver(
          {"images": alexnet_preprocessing.normalize(images)}, {"images": images})
    return receiver_fn

  def summarize(self, results, config):
    """Target and source accuracy, each named, then the per-domain table: the target on its
    test list, the sources on their crossval lists."""
    accuracies = domain_accuracies(results)
    if not accuracies:
      return None
    target = config.target_domain
    selected = "target" if config.select_on_target_accuracy else "source crossval"
    lines = ["MASF at global step %d: target accuracy %.2f%% (held-out %s, its test list: "
             "the seed's and the paper's figure); source crossval accuracy %.2f%% (%s); "
             "checkpoints are selected on the %s accuracy (`accuracy`)" % (
                 results["global_step"], 100 * results["target_accuracy"], target,
                 100 * results["source_crossval_accuracy"],
                 ", ".join(config.source_domains), selected),
             "| domain | role | images | accuracy (%) |", "|---|---|---|---|"]
    for domain in pacs.DOMAINS:
      if domain in accuracies:
        lines.append("| %s | %s | %d | %.2f |" % (
            domain, "target (test list)" if domain == target else "source (crossval list)",
            results["examples/" + domain], 100 * accuracies[domain]))
    return "\n".join(lines)
