"""What `from npu_bridge.npu_init import *` provides (no __all__, as in the adapter).

The Keras helpers, the `hccl.manage.api` functions and master's patch of
`tf.Session.__init__` are not part of the double.
"""
import os

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
from tensorflow.python.client import session
from tensorflow.python.training import session_run_hook

from npu_bridge.estimator import npu_ops
from npu_bridge.estimator.npu import util
from npu_bridge.estimator.npu.npu_config import DumpConfig
from npu_bridge.estimator.npu.npu_config import DynamicInputConfig
from npu_bridge.estimator.npu.npu_config import MemoryConfig
from npu_bridge.estimator.npu.npu_config import NPURunConfig
from npu_bridge.estimator.npu.npu_config import ProfilingConfig
from npu_bridge.estimator.npu.npu_estimator import NPUEstimator
from npu_bridge.estimator.npu.npu_estimator import NPUEstimatorSpec
from npu_bridge.estimator.npu.npu_hook import NPUBroadcastGlobalVariablesHook
from npu_bridge.estimator.npu.npu_hook import NPUCheckpointSaverHook
from npu_bridge.estimator.npu.npu_hook import NPUOutputTensorHook
from npu_bridge.estimator.npu.npu_hook import SetIterationsVarHook
from npu_bridge.estimator.npu.npu_hook import TellMeStepOrLossHook
from npu_bridge.estimator.npu.npu_loss_scale_manager import ExponentialUpdateLossScaleManager
from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer
from npu_bridge.estimator.npu.npu_optimizer import NPUOptimizer
from npu_bridge.estimator.npu.npu_optimizer import npu_allreduce
from npu_bridge.estimator.npu.npu_optimizer import npu_distributed_optimizer_wrapper
from npu_bridge.hccl import hccl_ops

experimental_options = {
    "disable_model_pruning": False,
    "function_optimization": RewriterConfig.ON,
    "constant_folding": RewriterConfig.ON,
    "shape_optimization": RewriterConfig.ON,
    "arithmetic_optimization": RewriterConfig.ON,
    "loop_optimization": RewriterConfig.ON,
    "dependency_optimization": RewriterConfig.ON,
    "layout_optimizer": RewriterConfig.ON,
}


def npu_config_proto(config_proto=None):
  """Adds an NpuOptimizer entry (if missing) and the adapter's fixed settings, in place."""
  if not isinstance(config_proto, config_pb2.ConfigProto):
    config_proto = config_pb2.ConfigProto()
  rewrite_options = config_proto.graph_options.rewrite_options
  if not any(custom.name == "NpuOptimizer" for custom in rewrite_options.custom_optimizers):
    rewrite_options.custom_optimizers.add().name = "NpuOptimizer"
    rewrite_options.memory_optimization = RewriterConfig.OFF
  config_proto.allow_soft_placement = True
  config_proto.log_device_placement = False
  rewrite_options.remapping = RewriterConfig.OFF
  config_proto.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.OFF
  return config_proto


def npu_graph_options(graph_options=None):
  if not isinstance(graph_options, config_pb2.GraphOptions):
    graph_options = config_pb2.GraphOptions()
  graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.OFF
  return graph_options


def npu_optimizer_options(optimizer_options=None):
  if not isinstance(optimizer_options, config_pb2.OptimizerOptions):
    optimizer_options = config_pb2.OptimizerOptions()
  optimizer_options.global_jit_level = config_pb2.OptimizerOptions.OFF
  return optimizer_options


def npu_run_config_init(run_config=None):
  """Patches the session config of a RunConfig in place; the class stays RunConfig."""
  if not isinstance(run_config, tf.estimator.RunConfig):
    run_config = tf.estimator.RunConfig()
  run_config._session_config = npu_config_proto(run_config.session_config)
  return run_config


def npu_hooks_append(hooks_list=()):
  if not isinstance(hooks_list, list):
    hooks_list = []
  hooks_list.append(NPUBroadcastGlobalVariablesHook(0, int(os.getenv("RANK_ID", "0"))))
  return hooks_list


def init_resource(config=None):
  sess = tf.Session(config=npu_config_proto(config))
  sess.run(npu_ops.initialize_system())
  return sess, npu_ops.shutdown_system()


def shutdown_resource(sess, npu_shutdown):
  sess.run(npu_shutdown)


def close_session(sess):
  sess.close()


def get_npu_rank_id():
  return 0


def get_npu_local_rank_id():
  return 0


def get_npu_rank_size():
  return 1


def get_npu_local_rank_size():
  return 1


class NpuEmptyHook(tf.train.SessionRunHook):
  pass


def npu_tf_optimizer(opt):
  return NPUDistributedOptimizer(opt)
