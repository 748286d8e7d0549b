"""What every model's predictions carry besides its own outputs.

- `id`: what identifies the input, passed through from the predict input pipeline's
  features["id"]: the image's file name where the data keeps one, else its TFDS record id
  `<shard file>__<index in the shard>` (input_fns.tfds_layout.keyed_records), or, for
  Fashion-MNIST, the record's index in its set. Serving inputs have no name, so a
  SavedModel's signature has no `id` and does not ask for one.
- `class_name`: the predicted class's name, looked up in a constant table inside the graph
  (so a SavedModel's signature returns it too), where the model knows its class names.
"""
import tensorflow.compat.v1 as tf

ID_KEY = "id"
CLASS_NAME_KEY = "class_name"


def add_input_fields(predictions, features, class_names, classes_key="classes"):
  """`predictions` plus `id` when the features have one, and `class_name` when
  `class_names` (indexed by class id; "" for a class without a name) is given."""
  fields = dict(predictions)
  if isinstance(features, dict) and ID_KEY in features:
    fields[ID_KEY] = features[ID_KEY]
  if class_names:
    fields[CLASS_NAME_KEY] = tf.gather(tf.constant(list(class_names)),
                                       predictions[classes_key])
  return fields


def with_input_fields(spec, features, class_names, classes_key="classes"):
  """A PREDICT EstimatorSpec with `add_input_fields` applied to its predictions and to
  each of its export outputs (for model_fns whose spec is built by shared code)."""
  predictions = add_input_fields(spec.predictions, features, class_names, classes_key)
  return tf.estimator.EstimatorSpec(
      spec.mode, predictions=predictions, scaffold=spec.scaffold,
      export_outputs={key: tf.estimator.export.PredictOutput(predictions)
                      for key in spec.export_outputs})
