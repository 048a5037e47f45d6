"""Training one model in several processes (tasks/data_parallel.py): how many, and each one's
rows (models.training.SplitTensors.batches). Horovod itself is not installed here; a run with it
is benchmarks/data_parallel_bench.py's (benchmarks/results/data_parallel.md)."""

import pytest
import tensorflow as tf

from models.training import SplitTensors, process_rank
from recflow.config import DataParallelConfig
from tasks.data_parallel import (
    DataParallelUnavailableError,
    horovod_installed,
    train_in_processes,
    training_processes,
)


def shares(rows: int, processes: int, batch: int, min_rows: int = 1) -> list[list[list[int]]]:
    """Each process's batches of one epoch, as row numbers."""
    split = SplitTensors({"row": tf.range(rows, dtype=tf.int64)}, None, rows)
    return [
        [
            batch_rows["row"].numpy().tolist()
            for batch_rows in split.batches(
                batch, shuffle=True, min_rows=min_rows, share=(process, processes)
            )
        ]
        for process in range(processes)
    ]


@pytest.mark.parametrize(("rows", "processes"), [(100, 2), (101, 2), (17, 2), (103, 4), (7, 3)])
def test_processes_get_the_same_number_of_steps_on_rows_of_their_own(rows, processes):
    """Every step averages all processes' gradients: a process with a step more than the others
    would wait for them forever."""
    batches = shares(rows, processes, batch=8)
    assert len({len(process) for process in batches}) == 1
    assert len({len(b) for process in batches for b in process[:-1]} | {8}) == 1
    taken = [row for process in batches for b in process for row in b]
    assert len(taken) == len(set(taken)) == rows // processes * processes


def test_one_process_gets_every_row():
    (batches,) = shares(101, 1, batch=8)
    assert sorted(row for b in batches for row in b) == list(range(101))


def test_a_last_batch_too_small_is_left_out_of_each_share():
    """The two-tower's min_rows=2 (no batch of one row) holds per process: 2 x 17 rows in
    batches of 8 would end each process's epoch on one row."""
    for process in shares(34, 2, batch=8, min_rows=2):
        assert [len(b) for b in process] == [8, 8]


def test_auto_uses_one_process_per_gpu_where_there_are_several_and_horovod():
    auto = DataParallelConfig()
    assert training_processes(auto, n_gpus=4, horovod=True) == 4
    assert training_processes(auto, n_gpus=1, horovod=True) == 1
    assert training_processes(auto, n_gpus=4, horovod=False) == 1
    assert training_processes(auto, n_gpus=0, horovod=False) == 1


def test_asking_for_processes_without_horovod_says_what_is_missing():
    with pytest.raises(DataParallelUnavailableError, match="processes=2 needs Horovod"):
        training_processes(DataParallelConfig(processes=2), n_gpus=0, horovod=False)
    assert training_processes(DataParallelConfig(processes=2), n_gpus=0, horovod=True) == 2
    assert training_processes(DataParallelConfig(processes=1), n_gpus=8, horovod=False) == 1


@pytest.mark.skipif(horovod_installed(), reason="this machine has Horovod")
def test_without_horovod_training_runs_here_as_one_process():
    assert process_rank() == (0, 1)
    assert train_in_processes(DataParallelConfig(), lambda *args: args, 1, "two") == (1, "two")


@pytest.mark.skipif(horovod_installed(), reason="this machine has Horovod")
def test_a_launch_that_fails_raises_instead_of_returning(monkeypatch):
    """Here Horovod's launcher itself is missing: the task must fail, not read a result that
    no process wrote."""
    import tasks.data_parallel as data_parallel

    monkeypatch.setattr(data_parallel, "horovod_installed", lambda: True)
    with pytest.raises(RuntimeError, match="training in 2 Horovod processes failed"):
        train_in_processes(DataParallelConfig(processes=2), lambda: None)
