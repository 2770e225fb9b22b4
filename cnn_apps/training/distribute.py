"""Where and in what precision training runs: ``training.distribution``, ``training.mixed_precision``.

* ``distribution: none`` trains on the default device. ``mirrored`` is
  ``tf.distribute.MirroredStrategy``: one replica per local GPU (on a machine without GPUs,
  one per logical CPU device; ``CNN_APPS_CPU_REPLICAS=N`` splits the CPU into N, which is how
  the tests run it). ``training.batch_size`` is the **global** batch: each of R replicas gets
  batch_size / R examples per step and the gradients are summed across replicas, so one step
  equals one single-device step on the whole batch (batch normalization is synchronized
  across replicas to keep that true; Dropout draws its masks per replica). The learning rate is used as given; with
  ``training.lr_scaling: linear`` it is multiplied by R (Goyal et al.'s linear scaling rule,
  for when you grow the global batch with R).
* ``multi_worker`` (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``) is refused for
  now with the reason: Keras 3's ``fit`` cannot consume its distributed datasets
  (keras-team/keras#20585).
* ``mixed_precision: mixed_float16 | mixed_bfloat16`` sets Keras' dtype policy while the
  model is built and trained: float16/bfloat16 compute, float32 variables, a float32
  softmax head, and (float16) dynamic loss scaling, which Keras' ``compile`` adds itself.
  It pays off on GPUs with tensor cores; on a CPU it is slower.
* ``jit_compile`` (true/false; default null = Keras' ``auto``) is passed to ``compile``. On
  the 2-core development CPU XLA was slower in every case measured; on a GPU it usually helps.
"""

from __future__ import annotations

import contextlib
import os

from cnn_apps.errors import ConfigError

CPU_REPLICAS_ENV = "CNN_APPS_CPU_REPLICAS"


def split_cpu(replicas: int | None = None) -> None:
    """Split the CPU into ``replicas`` logical devices (default: ``CNN_APPS_CPU_REPLICAS``);
    must run before TensorFlow initializes its devices (``cnn-apps`` does it at start)."""
    replicas = replicas or int(os.environ.get(CPU_REPLICAS_ENV, "0") or 0)
    if replicas <= 1:
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as exc:  # devices already initialized
        raise ConfigError(f"{CPU_REPLICAS_ENV}={replicas} must be set before TensorFlow starts: {exc}") from exc


def strategy_for(cfg):
    """The ``tf.distribute`` strategy ``cfg.distribution`` names (see the module docstring)."""
    import tensorflow as tf

    if cfg.distribution == "none":
        return tf.distribute.get_strategy()
    if cfg.distribution == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    raise ConfigError(
        "training.distribution: multi_worker (MultiWorkerMirroredStrategy) does not work with Keras 3's fit yet "
        "(keras-team/keras#20585: its distributed datasets reach the model as PerReplica values); use mirrored "
        "on one machine")


@contextlib.contextmanager
def training_scope(cfg):
    """Build and train inside this: the strategy's scope and the dtype policy of ``cfg``;
    yields the strategy. The previous policy is restored afterwards."""
    import keras

    strategy = strategy_for(cfg)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    try:
        with strategy.scope():
            yield strategy
    finally:
        keras.config.set_dtype_policy(previous)


def replicas() -> int:
    """Replicas of the strategy in scope (1 outside any)."""
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def synchronize_batch_norm(model) -> int:
    """Make every BatchNormalization layer of ``model`` compute its batch statistics over the
    global batch (all replicas), as one device would; returns how many it changed."""
    import keras

    changed = 0
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed


def scaled_learning_rate(cfg, learning_rate: float) -> float:
    """``learning_rate`` times the replicas in scope under ``lr_scaling: linear``."""
    return learning_rate * replicas() if cfg.lr_scaling == "linear" else learning_rate
