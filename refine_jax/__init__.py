"""refine_jax: refine pre-trained RAFT / PIPs motion models on unlabelled video (JAX/Flax)."""
import glob as _glob
import importlib.util as _util
import os as _os


def _skip_tpu_runtime_without_tpu() -> None:
    """With libtpu installed (the dev and tpu extras: `bench tpu` compiles for TPU topologies) JAX
    starts the TPU runtime on first use, which prints libtpu errors on a host without a TPU chip.
    There, and when nothing else (a GPU plugin) is installed, run on the CPU alone. An explicit
    JAX_PLATFORMS wins; compiling for TPU topologies does not need the runtime."""
    if "JAX_PLATFORMS" in _os.environ or _util.find_spec("libtpu") is None:
        return
    if _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):  # a TPU host
        return
    if any(_util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin")):
        return
    _os.environ["JAX_PLATFORMS"] = "cpu"


_skip_tpu_runtime_without_tpu()
# TensorFlow (only tf.data, TFRecord and TensorBoard summaries here) prints C++ INFO and WARNING
# lines on import: CPU features, and oneDNN's notice, which the level does not silence. oneDNN
# speeds TensorFlow's convolutions and matrix products, which refine_jax never runs in TensorFlow.
# Errors still show; an explicit setting wins.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
