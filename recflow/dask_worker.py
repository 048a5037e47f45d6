"""What recflow sets up in each worker of a local Dask cluster it starts (``recflow.compute``).

The workers fit and apply the NVTabular workflow with pandas or cuDF and never run TensorFlow,
but Merlin imports it wherever it is installed: ``merlin.dtypes`` registers TensorFlow's dtypes
on import (``merlin/dtypes/mappings/tf.py``), and a worker imports Merlin with its first
NVTabular task. On two cores, with both workers importing at once, NVTabular's import took 6.8 s
with TensorFlow and 1.6 s without, and the features stage's modules held 559 MB of RSS with it
against 280 MB, in every worker of every run. A ``None`` entry in ``sys.modules`` is Python's
documented way to make an import fail; Merlin then skips TensorFlow's mapping, as it does where
TensorFlow is not installed.
"""

from __future__ import annotations

import sys

from distributed import Worker, WorkerPlugin


class WithoutTensorFlow(WorkerPlugin):
    """Keeps TensorFlow out of a worker: set up in every worker, those started later too."""

    name = "recflow-without-tensorflow"

    def setup(self, worker: Worker) -> None:
        # setdefault: a worker that holds TensorFlow already keeps it.
        sys.modules.setdefault("tensorflow", None)
