"""Choosing a `tf.distribute` strategy by name."""

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices.

    Lets `MirroredStrategy` run N replicas on one CPU machine (for trying
    data-parallel code without accelerators). Must run before TensorFlow
    initialises its devices (before any op runs).

    Raises:
        ValueError: `num_devices < 1`.
        RuntimeError: TensorFlow's devices are already initialised.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices={num_devices} must be >= 1.")
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
    )


def create_strategy(name="default", tpu_address=None):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: one of `STRATEGIES`: "default" (no distribution), "one_device"
            (first GPU, else CPU), "mirrored" (all local GPUs, else all
            logical CPUs; see `split_cpu`), "multi_worker"
            (`MultiWorkerMirroredStrategy` configured by `TF_CONFIG`, with
            Keras' multi-worker `fit` fixed; create it before any other TF
            op: see `kbert.training.multi_worker`), "tpu" (`TPUStrategy`).
        tpu_address: str, TPU name or grpc address for "tpu" ("" = local).

    Raises:
        ValueError: unknown name (lists the known ones); a malformed
            `TF_CONFIG` for "multi_worker" (the key named).
        RuntimeError: "multi_worker" after TensorFlow was initialised.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        from kbert.training.multi_worker import create_multi_worker_strategy

        return create_multi_worker_strategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}; use one of {STRATEGIES}.")
