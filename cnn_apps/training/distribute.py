"""Where and in what precision training runs: ``training.distribution``, ``training.mixed_precision``.

* ``distribution: none`` trains on the default device. ``mirrored`` is
  ``tf.distribute.MirroredStrategy``: one replica per local GPU (on a machine without GPUs,
  one per logical CPU device; ``CNN_APPS_CPU_REPLICAS=N`` splits the CPU into N, which is how
  the tests run it). ``training.batch_size`` is the **global** batch: each of R replicas gets
  batch_size / R examples per step and the gradients are summed across replicas, so one step
  equals one single-device step on the whole batch (batch normalization is synchronized
  across replicas to keep that true; a loss normalized by a count, such as SSD's matched
  boxes or a segmenter's counted pixels, divides by the count over all replicas:
  :mod:`cnn_apps.replicas`; Dropout draws its masks per replica). The learning rate is used
  as given; with ``training.lr_scaling: linear`` it is multiplied by R (Goyal et al.'s linear
  scaling rule, for when you grow the global batch with R). One strategy serves the whole
  process (see :func:`strategy_for`).
* ``multi_worker`` is ``MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG`` (the cluster's
  workers and this process's index); every worker runs the same ``cnn-apps train`` command.
  Keras 3's ``fit`` cannot consume its distributed datasets (keras-team/keras#20585), so
  these runs train with :func:`fit_distributed`, a loop of ``strategy.run`` steps that drives
  the same callbacks. Each worker records its own MLflow run (tag ``worker``); the chief's
  (``worker: 0``) is the one to evaluate and export.
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
        raise ConfigError(
            f"{CPU_REPLICAS_ENV}={replicas} must be set before TensorFlow starts: {exc}"
        ) from exc


def strategy_for(cfg):
    """The ``tf.distribute`` strategy ``cfg.distribution`` names (see the module docstring)."""
    import tensorflow as tf

    if cfg.distribution == "none":
        return tf.distribute.get_strategy()
    if cfg.distribution == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in gpus) or tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        # one strategy per process: a second MirroredStrategy numbers its collectives from the
        # start again, and TensorFlow's collective runtime, which remembers each instance's shape,
        # aborts when a different model's all-reduce reuses a number (a study training several
        # models mirrored in one process)
        if devices not in _MIRRORED:
            _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
        return _MIRRORED[devices]
    return start_multi_worker()


_MIRRORED: dict = {}  # devices -> this process's MirroredStrategy over them


_MULTI_WORKER = []  # the one MultiWorkerMirroredStrategy of this process


def start_multi_worker():
    """This process's ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, made once: it must be
    made before TensorFlow runs anything ("collective ops must be configured at program
    startup"), so ``cnn-apps`` calls this as soon as it has read a config asking for it."""
    if not _MULTI_WORKER:
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "training.distribution: multi_worker needs TF_CONFIG on every worker, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                '"index": 0}}'
            )
        import tensorflow as tf

        _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
    return _MULTI_WORKER[0]


def worker_index() -> int:
    """This process's index in ``TF_CONFIG`` (0, the chief, without one)."""
    import json

    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return int(config.get("task", {}).get("index", 0))


def needs_custom_loop(cfg) -> bool:
    """Keras 3's ``fit`` cannot train under ``multi_worker`` (see the module docstring)."""
    return cfg.distribution == "multi_worker"


def _unscaled(value) -> float:
    """A loss computed in cross-replica context, where Keras (and :mod:`cnn_apps.replicas`)
    divide it by the replicas, back to its value."""
    import keras

    return float(keras.ops.convert_to_numpy(value)) * replicas()


def evaluate_local(model, dataset) -> dict:
    """``{"loss", ["accuracy"]}`` of ``model`` on ``dataset``, computed on this worker alone
    (every worker holds the same weights) by direct calls: the model's own loss (compiled, or
    a detector's ``compute_loss``) with the regularization terms, as Keras' ``evaluate``
    reports it, weighted by batch size; ``accuracy`` for a model compiled with it."""
    import numpy as np

    total = count = correct = 0.0
    accuracy = any(getattr(m, "name", "") == "accuracy" for m in _compiled_metrics(model))
    for x, y in dataset:
        y_pred = model(x, training=False)
        n = float(len(np.asarray(x["images"] if isinstance(x, dict) else x)))
        total += _unscaled(model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)) * n
        count += n
        if accuracy:
            correct += float(np.sum(np.argmax(np.asarray(y_pred), -1) == np.asarray(y)))
    out = {"loss": total / max(count, 1.0)}
    if accuracy:
        out["accuracy"] = correct / max(count, 1.0)
    return out


def _compiled_metrics(model) -> list:
    compiled = getattr(model, "_compile_metrics", None)
    return list(getattr(compiled, "_user_metrics", None) or []) if compiled is not None else []


def fit_distributed(
    model,
    train_ds,
    val_ds,
    *,
    epochs: int,
    initial_epoch: int,
    steps_per_epoch: int,
    global_batch: int,
    callbacks,
) -> object:
    """Train a compiled model like ``fit`` (same callbacks, per-epoch logs ``loss``,
    ``val_loss`` and, for a classifier, ``accuracy``/``val_accuracy``) with the strategy in
    scope: each step runs on every replica of every worker, each replica's loss is its share
    of the global batch's (Keras' ``compute_loss``; a detector's normalizers count over all
    replicas, :mod:`cnn_apps.replicas`) and the optimizer's ``apply_gradients`` sums the
    gradients across replicas. ``train_ds``: batches of ``global_batch`` examples,
    ``steps_per_epoch`` per epoch, each worker taking its share. Returns the ``History``
    callback."""
    import keras
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = iter(strategy.experimental_distribute_dataset(train_ds.with_options(options)))
    model.optimizer.build(model.trainable_variables)
    accuracy = any(getattr(m, "name", "") == "accuracy" for m in _compiled_metrics(model))

    @tf.function
    def train_step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
                scaled = model.optimizer.scale_loss(loss)  # float16 loss scaling, when on
            grads = tape.gradient(scaled, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            if accuracy:
                hits = tf.reduce_sum(
                    tf.cast(tf.equal(tf.argmax(y_pred, -1), tf.cast(y, tf.int64)), tf.float32)
                )
                size = tf.cast(tf.shape(y)[0], tf.float32)
            else:
                hits = size = tf.constant(0.0)
            return loss, hits, size

        return tuple(
            strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for v in strategy.run(replica_step, args=(x, y))
        )

    calls = keras.callbacks.CallbackList(
        callbacks, add_history=True, model=model, epochs=epochs, steps=steps_per_epoch, verbose=0
    )
    model.stop_training = False
    calls.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        calls.on_epoch_begin(epoch)
        loss_sum = hits_sum = seen = 0.0
        for step in range(steps_per_epoch):
            calls.on_train_batch_begin(step)
            x, y = next(batches)
            loss, hits, count = train_step(x, y)  # the shares summed: the global batch's loss
            loss_sum, hits_sum, seen = loss_sum + float(loss), hits_sum + float(hits), seen + float(count)
            calls.on_train_batch_end(step, {"loss": loss_sum / (step + 1)})
        val = evaluate_local(model, val_ds)
        logs = {"loss": loss_sum / steps_per_epoch, **{f"val_{k}": v for k, v in val.items()}}
        if accuracy:
            logs["accuracy"] = hits_sum / max(seen, 1.0)
        calls.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    calls.on_train_end()
    return model.history


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
