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
  --dataroot            PACS root (kfold/ + splits/), read directly when --data_dir is empty;
                        --data_dir instead points at tfrecords built by `python -m input_fns.pacs`
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
from absl import flags as absl_flags
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


@registry.register("masf")
class Masf(registry.Model):
  """MASF / DeepAll on PACS (see the module docstring)."""

  headline_metric = ("target_accuracy", "accuracy on the held-out --target_domain's test "
                     "list (what the seed and the paper report)")

  def define_flags(self, flag_values=None):
    fv = absl_flags.FLAGS if flag_values is None else flag_values
    define = dict(flag_values=fv)
    absl_flags.DEFINE_enum("algorithm", masf_model_fn.MASF, list(masf_model_fn.ALGORITHMS),
                           "masf: meta-learning with global + local losses; deepall: "
                           "cross-entropy on the pooled source domains (baseline).", **define)
    absl_flags.DEFINE_enum("target_domain", "cartoon", list(pacs.DOMAINS),
                           "Held-out PACS domain; the other three are the sources.", **define)
    absl_flags.DEFINE_string("dataroot", "", "PACS root holding kfold/ and splits/ "
                             "(default $DATA_ROOT/pacs); read when --data_dir is empty.",
                             **define)
    absl_flags.DEFINE_bool("skip_bad_list_lines", True,
                           "Drop bad split-list lines (bad label, duplicate, missing image), "
                           "naming each in a warning; --noskip_bad_list_lines fails instead.",
                           **define)
    absl_flags.DEFINE_integer("meta_batch_size", DEFAULT_META_BATCH_SIZE,
                              "Images per source domain per step.", **define)
    absl_flags.DEFINE_float("inner_lr", 1e-5, "Inner-loop (fast weights) SGD step.", **define)
    absl_flags.DEFINE_float("outer_lr", 1e-5, "Adam rate of the task and meta steps.", **define)
    absl_flags.DEFINE_float("metric_lr", 1e-5, "Adam rate of the metric-net step.", **define)
    absl_flags.DEFINE_float("margin", 10.0, "Triplet margin (squared distances).", **define)
    absl_flags.DEFINE_float("gradients_clip_value", 2.0,
                            "Per-tensor clip_by_norm of the inner and meta gradients.", **define)
    absl_flags.DEFINE_float("global_loss_weight", 1.0, "Weight of the global (class "
                            "alignment) loss; 0 disables it (ablation).", **define)
    absl_flags.DEFINE_float("local_loss_weight", 0.005, "Weight of the local (triplet) loss "
                            "in the meta and metric steps; 0 disables it (ablation).", **define)
    absl_flags.DEFINE_bool("meta_step_updates_metric_net", True,
                           "Reference quirk: the meta Adam also updates model/metric/* (so it "
                           "gets two updates a step). False: only the metric Adam does.",
                           **define)
    absl_flags.DEFINE_integer("num_classes", pacs.NUM_CLASSES, "Classes (PACS: 7).", **define)
    absl_flags.DEFINE_string("weights_path", "", "bvlc_alexnet.npy or its .npz conversion "
                             "(conv1..fc7); empty: train from scratch.", **define)
    absl_flags.DEFINE_integer("image_size", network.REFERENCE_IMAGE_SIZE,
                              "Input side; 227 gives AlexNet's fc6 fan-in 9216 (tests use less).",
                              **define)
    absl_flags.DEFINE_integer("fc_units", network.FC_UNITS,
                              "Width of fc6/fc7 (4096 = AlexNet; tests shrink it).", **define)
    absl_flags.DEFINE_float("flip_probability", alexnet_preprocessing.REFERENCE_FLIP_PROBABILITY,
                            "Random left-right flip probability in training (reference: "
                            "0.5 x 0.25 x 0.5).", **define)
    absl_flags.DEFINE_bool("cache_decoded_images", True,
                           "Decode each training image once and keep it (uint8) in memory: "
                           "about 1 GB for three source domains at 227x227.", **define)
    absl_flags.DEFINE_bool("select_on_target_accuracy", False,
                           "ORIGINAL PROTOCOL, leaks the test domain: make `accuracy` (the "
                           "model-selection metric) the target's test accuracy instead of the "
                           "sources' crossval accuracy.", **define)
    for name, value in (("train_steps", REFERENCE_TRAIN_ITERATIONS),
                        ("train_batch_size", 3 * DEFAULT_META_BATCH_SIZE),
                        ("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE)):
      if name in fv:
        fv.set_default(name, value)
    if "train_steps" in fv and "train_iterations" not in fv:
      absl_flags.DEFINE_alias("train_iterations", "train_steps", flag_values=fv)

  def summarize(self, results, flags):
    """Target and source accuracy, each named, then the per-domain table: the target on its
    test list, the sources on their crossval lists."""
    accuracies = domain_accuracies(results)
    if not accuracies:
      return None
    target = flags.target_domain
    selected = "target" if flags.select_on_target_accuracy else "source crossval"
    lines = ["MASF at global step %d: target accuracy %.2f%% (held-out %s, its test list: "
             "the seed's and the paper's figure); source crossval accuracy %.2f%% (%s); "
             "checkpoints are selected on the %s accuracy (`accuracy`)" % (
                 results["global_step"], 100 * results["target_accuracy"], target,
                 100 * results["source_crossval_accuracy"],
                 ", ".join(source_domains(target)), selected),
             "| domain | role | images | accuracy (%) |", "|---|---|---|---|"]
    for domain in pacs.DOMAINS:
      if domain in accuracies:
        lines.append("| %s | %s | %d | %.2f |" % (
            domain, "target (test list)" if domain == target else "source (crossval list)",
            results["examples/" + domain], 100 * accuracies[domain]))
    return "\n".join(lines)

  def validate_flags(self, flags):
    if flags.meta_batch_size < 3:
      raise ValueError("--meta_batch_size=%d: need at least 3 (the triplet group takes "
                       "meta_batch_size//3 images of each domain)" % flags.meta_batch_size)
    episode = self.train_batch_size(flags)
    if (registry.flag_given(flags, "train_batch_size") and
        flags.train_batch_size != episode):
      raise ValueError("--train_batch_size=%d: MASF's batch is 3 x --meta_batch_size = %d; "
                       "set --meta_batch_size only" % (flags.train_batch_size, episode))
    for name in ("inner_lr", "outer_lr", "metric_lr", "gradients_clip_value"):
      if not getattr(flags, name) > 0:
        raise ValueError("--%s=%r must be > 0" % (name, getattr(flags, name)))
    for name in ("margin", "global_loss_weight", "local_loss_weight"):
      if getattr(flags, name) < 0:
        raise ValueError("--%s=%r must be >= 0" % (name, getattr(flags, name)))
    if not 0.0 <= flags.flip_probability <= 1.0:
      raise ValueError("--flip_probability=%r must be in [0, 1]" % flags.flip_probability)
    if flags.num_classes != pacs.NUM_CLASSES:
      raise ValueError("--num_classes=%d: PACS has %d classes" % (flags.num_classes,
                                                                  pacs.NUM_CLASSES))
    if flags.image_size < network.min_image_size():
      raise ValueError("--image_size=%d is too small for AlexNet (minimum %d)"
                       % (flags.image_size, network.min_image_size()))
    if flags.fc_units < 1:
      raise ValueError("--fc_units=%d must be >= 1" % flags.fc_units)
    if flags.eval_batch_size < 1:
      raise ValueError("--eval_batch_size=%d must be >= 1" % flags.eval_batch_size)
    if flags.weights_path:
      if not tf.io.gfile.exists(flags.weights_path):
        raise ValueError("--weights_path=%s does not exist" % flags.weights_path)
      if (flags.image_size != network.REFERENCE_IMAGE_SIZE or
          flags.fc_units != network.FC_UNITS):
        raise ValueError("--weights_path needs --image_size=%d and --fc_units=%d (AlexNet's "
                         "fc6 is 9216 x 4096), got %d and %d"
                         % (network.REFERENCE_IMAGE_SIZE, network.FC_UNITS, flags.image_size,
                            flags.fc_units))

  def check_inputs(self, flags):
    source = self._source(flags)
    for domain in source_domains(flags.target_domain):
      if source.count(domain, "train") < flags.meta_batch_size:
        raise ValueError("--meta_batch_size=%d exceeds the %d images of %s's train list"
                         % (flags.meta_batch_size, source.count(domain, "train"), domain))
    source.check(self._eval_lists(flags))
    if flags.weights_path:
      weights_lib.check(flags.weights_path, flags.image_size, flags.fc_units)

  def params(self, flags):
    return {
        "algorithm": flags.algorithm,
        "target_domain": flags.target_domain,
        "source_domains": list(source_domains(flags.target_domain)),
        "num_classes": flags.num_classes,
        "image_size": flags.image_size,
        "fc_units": flags.fc_units,
        "meta_batch_size": flags.meta_batch_size,
        "inner_lr": flags.inner_lr,
        "outer_lr": flags.outer_lr,
        "metric_lr": flags.metric_lr,
        "margin": flags.margin,
        "gradients_clip_value": flags.gradients_clip_value,
        "global_loss_weight": flags.global_loss_weight,
        "local_loss_weight": flags.local_loss_weight,
        "meta_step_updates_metric_net": flags.meta_step_updates_metric_net,
        "select_on_target_accuracy": flags.select_on_target_accuracy,
        "weights_path": flags.weights_path,
        "log_step_count_steps": flags.log_step_count_steps or 100,
    }

  def model_fn(self, features, labels, mode, params):
    return masf_model_fn.model_fn(features, labels, mode, params)

  @staticmethod
  def _source(flags):
    return pacs.PacsSource(data_dir=flags.data_dir, dataroot=flags.dataroot,
                           skip_bad_lines=flags.skip_bad_list_lines)

  @staticmethod
  def _eval_lists(flags):
    return ([(d, "crossval") for d in source_domains(flags.target_domain)] +
            [(flags.target_domain, "test")])

  def input_fn(self, flags, mode):
    input_fn = self._input_fn(flags, mode)
    # The TFRecords it reads (none from image folders), so that a record found corrupt
    # while running is named (run_loop).
    if mode == tf.estimator.ModeKeys.TRAIN:
      lists = [(d, "train") for d in source_domains(flags.target_domain)]
    elif mode == tf.estimator.ModeKeys.EVAL:
      lists = self._eval_lists(flags)
    else:
      lists = [(flags.target_domain, "test")]
    input_fn.files = ([pacs.tfrecord_path(flags.data_dir, d, s) for d, s in lists]
                      if flags.data_dir else [])
    return input_fn

  def _input_fn(self, flags, mode):
    source = self._source(flags)
    if mode == tf.estimator.ModeKeys.TRAIN:
      episode = 3 * flags.meta_batch_size

      def train_input_fn(params):
        if params.get("batch_size", episode) != episode:
          raise ValueError("batch_size %d != 3 x --meta_batch_size = %d"
                           % (params["batch_size"], episode))
        return pacs.episode_dataset(source, source_domains(flags.target_domain),
                                    flags.meta_batch_size, flags.image_size,
                                    flags.flip_probability, flags.cache_decoded_images)
      return train_input_fn

    if mode == tf.estimator.ModeKeys.EVAL:
      def eval_input_fn(params):
        return pacs.eval_dataset(source, self._eval_lists(flags), flags.image_size,
                                 params["batch_size"])
      return eval_input_fn

    def predict_input_fn(params):
      return pacs.predict_dataset(source, [(flags.target_domain, "test")], flags.image_size,
                                  params["batch_size"])
    return predict_input_fn

  def domain_eval_input_fn(self, flags, domain, split="test"):
    """Eval input_fn over one domain's list (e.g. for a per-domain accuracy table)."""
    source = self._source(flags)
    source.check([(domain, split)])

    def input_fn(params):
      return pacs.eval_dataset(source, [(domain, split)], flags.image_size, params["batch_size"])
    return input_fn

  def train_batch_size(self, flags):
    """One episode: meta_batch_size images of each of the three source domains."""
    return 3 * flags.meta_batch_size

  def train_examples(self, flags):
    """The source domains' training images (the builder's summary counts with --data_dir)."""
    source = self._source(flags)
    return sum(source.count(d, "train") for d in source_domains(flags.target_domain))

  def serving_input_receiver_fn(self, flags):
    size = flags.image_size

    def receiver_fn():
      images = tf.placeholder(tf.float32, [None, size, size, 3], name="images")
      return tf.estimator.export.ServingInputReceiver(
          {"images": alexnet_preprocessing.normalize(images)}, {"images": images})
    return receiver_fn
