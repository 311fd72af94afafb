"""The data-parallel bookkeeping in one process: the split of the global batch, the environment,
the comparison of the ranks' facts and how a survivor names the rank that failed or died (on an
in-memory store, no process group)."""

from __future__ import annotations

import pytest
import torch.distributed as tdist

from lora_qta.errors import CollectiveError, RankLostError, RendezvousError
from lora_qta.training import distributed
from lora_qta.training.distributed import DataParallel, block_of_rows, disagreements


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("batch", [8, 9, 16, 17])
def test_the_ranks_rows_cover_the_global_batch_once(world, batch):
    rows = [block_of_rows(r, world, batch) for r in range(world)]
    assert [i for s in rows for i in range(batch)[s]] == list(range(batch))
    sizes = [s.stop - s.start for s in rows]
    assert max(sizes) - min(sizes) <= 1


def test_the_environment_decides(monkeypatch):
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    assert DataParallel.from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DataParallel.from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(RendezvousError, match="RANK=2 is outside 0..1"):
        DataParallel.from_environment()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LORA_QTA_DIST_TIMEOUT", "soon")
    with pytest.raises(RendezvousError, match="not a number of seconds"):
        DataParallel.from_environment()


def test_disagreements_name_every_difference_by_rank():
    same = {"package version": "0.1.0", "board": "zcu104", "backend": "fast", "--rank": 8}
    assert disagreements([same, dict(same), dict(same)]) == []
    other = {**same, "package version": "0.2.0", "backend": "board"}
    assert disagreements([same, dict(same), other]) == [
        "package version: rank 0 0.1.0, rank 1 0.1.0, rank 2 0.2.0",
        "backend: rank 0 fast, rank 1 fast, rank 2 board"]


@pytest.fixture
def survivor(monkeypatch):
    """Rank 0 of 3 on an in-memory store, with short silence."""
    monkeypatch.setattr(distributed, "SILENCE_S", 0.6)
    store = tdist.HashStore()
    dp = DataParallel(0, 3, 60.0, owns_group=False, kv=store, agent_store=True)
    dp.output_dir = "runs/dp"
    yield dp, store
    dp.close()


def test_a_survivor_names_the_rank_that_failed(survivor):
    dp, store = survivor
    store.set("state/1", "running")
    store.set("state/2", "failed:CheckpointError: disk full")
    store.set("host/2", "board2")
    dp.step, dp.last_checkpoint = 6, 6
    e = dp.explain(CollectiveError("the gradient all-reduce of step 7 failed"))
    assert isinstance(e, RankLostError)
    assert str(e) == ("rank 0 stopped after 7 steps: rank 2 (board2) failed: CheckpointError: disk full; the last "
                      "checkpoint, runs/dp/checkpoints/step_000006 on rank 0, stays valid: start every rank again "
                      "with --resume")
    assert store.get("state/0") == b"stopped"


def test_a_survivor_names_a_rank_whose_heartbeat_stopped(survivor):
    dp, store = survivor
    store.set("state/1", "stopped")  # another survivor
    store.set("state/2", "running")  # never posted again, heartbeat frozen
    dp.step, dp.last_checkpoint, dp._pending_checkpoint = 3, 2, 4
    e = dp.explain(CollectiveError("x"))
    assert "rank 2 died or stopped answering" in str(e) and "rank 1" not in str(e)
    assert "step_000004 (or step_000002 if rank 0 died while writing it)" in str(e)


def test_a_sigterm_without_a_failure_and_a_lost_store(survivor):
    dp, store = survivor
    store.set("state/1", "stopped")
    store.set("state/2", "stopped")
    dp.terminated = True
    assert "the launcher stopped it (SIGTERM) while no other rank reported a failure" in str(dp.explain(Exception()))

    class Gone:
        def __getattr__(self, name):
            def fail(*a, **k):
                raise OSError("connection reset")
            return fail

    dp.kv, dp.phase, dp.rank, dp.terminated = Gone(), "setting up", 1, False  # seen from rank 1
    dp.agent_store = False
    assert str(dp.explain(Exception())) == ("rank 1 stopped while setting up: rank 0, which hosts the rendezvous store, "
                                            "died or stopped answering; fix the cause and start the run again")
    dp.agent_store = True
    assert "torchrun's agent on the first node is gone" in str(dp.explain(Exception()))
