"""Choosing the Keras dtype policy for training from the hardware it runs on.

`mixed_bfloat16` pays off only where bfloat16 arithmetic is native: TPUs,
NVIDIA GPUs of compute capability 8.0 (Ampere) or newer, and x86 CPUs with
AVX-512 BF16 (`avx512_bf16`, e.g. AMD Zen 4, Intel Cooper Lake) or AMX
(`amx_bf16`, Intel Sapphire Rapids). Elsewhere (e.g. AVX2-only Zen 3) oneDNN
and Eigen emulate it by converting to float32 and back, and a bfloat16 step
is slower than a float32 one, so `resolve_mixed_precision("auto")` picks
float32 there. The CPU's instruction-set flags are the `flags` line of
`/proc/cpuinfo` (Linux; elsewhere none are known, and "auto" is float32).
"""

import dataclasses
import warnings

import tensorflow as tf

MIXED_PRECISION_CHOICES = ("auto", "none", "mixed_float16", "mixed_bfloat16")
# /proc/cpuinfo flags of x86 CPUs whose matrix units take bfloat16 (resp. float16) natively.
NATIVE_BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NATIVE_FLOAT16_CPU_FLAGS = ("avx512_fp16", "amx_fp16")
# Compute capabilities from which NVIDIA tensor cores take bfloat16 (Ampere) and float16 (Volta).
_GPU_BFLOAT16 = (8, 0)
_GPU_FLOAT16 = (7, 0)


class EmulatedPrecisionWarning(UserWarning):
    """A mixed-precision policy was forced on hardware that emulates its compute dtype."""


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the dtype policy depends on: the CPU, the GPUs and whether a TPU is used.

    Attributes:
        cpu_model: str, the CPU's `model name` ("unknown" when not found).
        cpu_flags: frozenset of str, its instruction-set flags (`/proc/cpuinfo`).
        gpu_compute_capabilities: tuple of `(major, minor)` int pairs, one per
            visible GPU (empty: no GPU).
        tpu: bool, a TPU runs the model.
    """

    cpu_model: str = "unknown"
    cpu_flags: frozenset = frozenset()
    gpu_compute_capabilities: tuple = ()
    tpu: bool = False

    @property
    def accelerator(self):
        """"tpu", "gpu" or "cpu": the device that runs the model's matmuls."""
        if self.tpu:
            return "tpu"
        return "gpu" if self.gpu_compute_capabilities else "cpu"

    def is_native(self, compute_dtype):
        """Whether `compute_dtype` ("bfloat16" or "float16") is native on `accelerator`.

        TPU: bfloat16 only. GPU: every GPU of compute capability >= 8.0
        (bfloat16) or >= 7.0 (float16). CPU: one of `NATIVE_BFLOAT16_CPU_FLAGS`
        (resp. `NATIVE_FLOAT16_CPU_FLAGS`) in `cpu_flags`.
        """
        bfloat16 = compute_dtype == "bfloat16"
        if self.accelerator == "tpu":
            return bfloat16
        if self.accelerator == "gpu":
            least = _GPU_BFLOAT16 if bfloat16 else _GPU_FLOAT16
            return all(tuple(c) >= least for c in self.gpu_compute_capabilities)
        wanted = NATIVE_BFLOAT16_CPU_FLAGS if bfloat16 else NATIVE_FLOAT16_CPU_FLAGS
        return any(flag in self.cpu_flags for flag in wanted)

    def describe(self):
        """One line naming the device, e.g. "CPU AMD EPYC (avx512_bf16: yes, amx_bf16: no)"."""
        if self.accelerator == "tpu":
            return "TPU"
        if self.accelerator == "gpu":
            capabilities = ", ".join(f"{a}.{b}" for a, b in self.gpu_compute_capabilities)
            return f"GPU (compute capability {capabilities})"
        found = ", ".join(
            f"{flag}: {'yes' if flag in self.cpu_flags else 'no'}"
            for flag in NATIVE_BFLOAT16_CPU_FLAGS
        )
        return f"CPU {self.cpu_model} ({found})"


def parse_cpuinfo(text):
    """The first processor's model name and flags in the text of `/proc/cpuinfo`.

    Args:
        text: str, the file's contents (`key<TAB>: value` lines).

    Returns:
        `(model_name, flags)`: str ("unknown" when absent) and frozenset of str.
    """
    model, flags = "unknown", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    return model, flags or frozenset()


def detect_hardware(strategy=None, cpuinfo_path="/proc/cpuinfo"):
    """Describes this machine without initialising TensorFlow's runtime.

    Only physical devices are listed, so it may run before a
    `MultiWorkerMirroredStrategy` is created.

    Args:
        strategy: optional `tf.distribute.Strategy`; a `TPUStrategy` (a TPU
            reached through a cluster resolver lists no local device) means TPU.
        cpuinfo_path: str, the file holding the CPU's flags (tests pass a
            synthetic one); missing or unreadable means no flags.

    Returns:
        `Hardware`.
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:
        model, flags = "unknown", frozenset()
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    tpu = isinstance(strategy, tf.distribute.TPUStrategy) or bool(
        tf.config.list_physical_devices("TPU")
    )
    return Hardware(model, flags, tuple(capabilities), tpu)


def resolve_mixed_precision(mode, hardware=None, strategy=None):
    """The Keras dtype policy name to train with for a `--mixed_precision` choice.

    Args:
        mode: one of `MIXED_PRECISION_CHOICES`. "auto": "mixed_bfloat16" where
            bfloat16 is native (`Hardware.is_native`: TPU, GPU of compute
            capability >= 8.0, CPU with avx512_bf16 or amx_bf16), else
            "float32". "none": "float32". "mixed_float16" / "mixed_bfloat16":
            that policy, with an `EmulatedPrecisionWarning` (one line naming
            the device) where its compute dtype is emulated.
        hardware: optional `Hardware`; default `detect_hardware(strategy)`.
        strategy: optional `tf.distribute.Strategy` (see `detect_hardware`).

    Returns:
        str: "float32", "mixed_float16" or "mixed_bfloat16", for
        `keras.mixed_precision.set_global_policy`.

    Raises:
        ValueError: `mode` is not one of `MIXED_PRECISION_CHOICES`.
    """
    if mode not in MIXED_PRECISION_CHOICES:
        raise ValueError(
            f"mixed_precision={mode!r} is not one of {MIXED_PRECISION_CHOICES}."
        )
    if mode == "none":
        return "float32"
    hardware = hardware or detect_hardware(strategy)
    if mode == "auto":
        return "mixed_bfloat16" if hardware.is_native("bfloat16") else "float32"
    compute_dtype = mode.removeprefix("mixed_")
    if not hardware.is_native(compute_dtype):
        warnings.warn(
            f"{mode} on {hardware.describe()}: {compute_dtype} is emulated there, so "
            f"training is slower than in float32; use --mixed_precision=auto.",
            EmulatedPrecisionWarning,
            stacklevel=2,
        )
    return mode
