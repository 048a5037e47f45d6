"""TensorFlow's oneDNN kernels are chosen before a module of ours loads TensorFlow
(recflow/__init__.py): TensorFlow reads the switch once, so a package that imported TensorFlow
before recflow would train with Eigen's kernels on the AVX2 hosts this runs on. On a CPU where
TensorFlow turns oneDNN on by itself (AVX-512 VNNI and newer) the first test passes either way.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A package's __init__ runs before any of its modules: importing it, then TensorFlow, is what
# each module of it that imports TensorFlow at its top does.
PROBE = (
    "import {package}\n"
    "import tensorflow\n"
    "from tensorflow.python.util import _pywrap_util_port as port\n"
    "print(port.IsMklEnabled())"
)


def onednn_enabled(package: str, setting: str | None) -> bool:
    """Whether TensorFlow runs oneDNN's kernels in a fresh process that loads it after
    ``package``, with TF_ENABLE_ONEDNN_OPTS at ``setting`` (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    probe = [sys.executable, "-c", PROBE.format(package=package)]
    result = subprocess.run(probe, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return result.stdout.split()[-1] == "True"


# The two packages whose modules import TensorFlow.
@pytest.mark.parametrize("package", ["models", "serving"])
def test_our_packages_load_tensorflow_with_onednn_kernels(package):
    assert onednn_enabled(package, None)


def test_an_explicit_setting_outside_is_kept():
    assert not onednn_enabled("models", "0")
