"""recflow's shared layer: configuration, typed artifacts, paths, logs.

Importing it chooses TensorFlow's CPU kernels, which must happen before TensorFlow loads: the
packages of ours that import TensorFlow (models/, serving/) import this one first.
"""

import os

# TensorFlow 2.12 uses its oneDNN kernels by default only on x86 CPUs with AVX-512 VNNI or newer;
# elsewhere it keeps Eigen's. On the 2-core AVX2 hosts measured here oneDNN's matrix products
# ran the ml-1m two-tower 7 % faster at the same validation recall, and served the same
# (benchmarks/results/scale.md, "oneDNN"). TensorFlow reads the switch once, when it loads; a
# value set outside (TF_ENABLE_ONEDNN_OPTS=0: Eigen's kernels) is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
