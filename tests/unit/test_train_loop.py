"""The training kit's pure parts: which rows a worker's batch holds, and when a loop reports."""

from types import SimpleNamespace

import numpy as np
import pytest

from components.train_loop import Run, batch_rows, report_due


def pretrain_batch_before_the_kit(n: int, index: int, size: int, rank: int, world: int, seed: int) -> np.ndarray:
    """components/pretrain/loop.py's `_batch` row selection as it was before the kit (the figures' reference)."""
    per_rank = n // world
    per_epoch = max(1, per_rank // size)
    epoch, position = divmod(index, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n)[rank::world][:per_rank]
    return order[(position * size) % per_rank : (position * size) % per_rank + size]


@pytest.mark.parametrize("n, size, world", [(100, 8, 2), (37, 4, 3), (10, 16, 2), (5, 2, 1)])
def test_pretrain_rows_are_unchanged_by_the_kit(n, size, world):
    for rank in range(world):
        for index in range(40):
            assert np.array_equal(batch_rows(n, index, size, rank, world, 7, wrap=False),
                                  pretrain_batch_before_the_kit(n, index, size, rank, world, 7))


def test_a_batch_depends_only_on_its_index_so_a_resumed_run_sees_the_same_batches():
    first = [batch_rows(50, i, 4, 1, 2, 3) for i in range(30)]
    resumed = [batch_rows(50, i, 4, 1, 2, 3) for i in range(12, 30)]
    assert all(np.array_equal(a, b) for a, b in zip(first[12:], resumed))


def test_an_epoch_covers_each_rank_share_once_and_the_ranks_are_disjoint():
    n, size, world = 48, 4, 2
    per_epoch = n // world // size
    shares = [np.concatenate([batch_rows(n, i, size, rank, world, 0) for i in range(per_epoch)]) for rank in range(world)]
    assert all(len(set(s)) == len(s) == n // world for s in shares)
    assert not set(shares[0]) & set(shares[1])
    next_epoch = np.concatenate([batch_rows(n, i, size, 0, world, 0) for i in range(per_epoch, 2 * per_epoch)])
    assert not np.array_equal(next_epoch, shares[0])  # epochs reshuffle by seed


def test_a_share_shorter_than_the_batch_wraps_or_stays_short():
    assert len(batch_rows(6, 0, 8, 0, 2, 0)) == 8 and len(set(batch_rows(6, 0, 8, 0, 2, 0))) == 3
    assert len(batch_rows(6, 0, 8, 0, 2, 0, wrap=False)) == 3
    assert len(batch_rows(0, 0, 8, 0, 2, 0)) == 0 and len(batch_rows(6, 0, 0, 0, 2, 0)) == 0


def test_reports_come_on_log_eval_and_checkpoint_steps_and_at_the_end():
    due = [d for d in range(1, 26) if report_due(d, 25, log_every=10, eval_every=4, checkpoint_every=15)]
    assert due == [4, 8, 10, 12, 15, 16, 20, 24, 25]


def test_run_windows_cadence_and_resume_marker():
    cfg = SimpleNamespace(max_steps=6, log_every=2, eval_every=3, checkpoint_every=100, strategy="ddp")
    run = Run(cfg, par=None, rank=0, rate="examples_per_s", items_per_step=8)
    assert list(run.steps()) == list(range(6))
    seen = []
    for _ in run.steps():
        run.add(loss=1.0)
        run.record(0.5, loss=2.0)
        if run.report_due():
            seen.append((run.done, run.eval_due(), run.last, run.window_steps, run.window["loss"]))
            run._reset_window()
    assert seen == [(2, False, False, 2, 6.0), (3, True, False, 1, 3.0), (4, False, False, 1, 3.0),
                    (6, True, True, 2, 6.0)]
    resumed = Run(cfg, par=None, rank=0, rate="examples_per_s", items_per_step=8)
    resumed.progress = {"step": 4}
    assert list(resumed.steps()) == [4, 5]
