# Before TensorFlow loads: recflow/__init__.py chooses its CPU kernels.
import recflow  # noqa: F401
