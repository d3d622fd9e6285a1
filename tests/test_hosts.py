"""Which model host takes a unit (tasks/hosts.py, `HostPool._choose`), without starting Ray: a host keeps its
model while more units of it are coming, one model's units spread over idle hosts, and a unit waits only
for a busy host that holds its model."""

import threading

import pytest

from tasks.hosts import HostPool


def _pool(n_hosts: int, pending: dict[str, int]) -> HostPool:
    pool = object.__new__(HostPool)  # the borrowing rule only: no actors
    pool.hosts, pool.holds, pool.last_used = [None] * n_hosts, [None] * n_hosts, [0.0] * n_hosts
    pool.free, pool.pending, pool.lock = set(range(n_hosts)), dict(pending), threading.Condition()
    return pool


def test_one_model_spreads_over_every_host():
    pool = _pool(2, {"A": 4})
    assert [pool._borrow("A"), pool._borrow("A")] == [0, 1]  # the second host loads it too: both work


def test_two_models_on_two_hosts_keep_one_model_each():
    pool = _pool(2, {"A": 2, "B": 2})
    assert pool._borrow("A") == 0 and pool._borrow("B") == 1
    pool._give_back(1, "B")
    assert pool._choose("A") is None  # host 1 keeps B (a B unit is coming); A waits for host 0
    pool._give_back(0, "A")
    assert pool._choose("A") == 0 and pool._borrow("B") == 1


def test_a_host_whose_model_is_finished_takes_another_model():
    pool = _pool(2, {"A": 2, "B": 1})
    assert pool._borrow("A") == 0 and pool._borrow("B") == 1
    pool._give_back(1, "B")
    assert pool._borrow("A") == 1  # no B unit left: host 1 loads A rather than idling


def test_a_model_no_host_holds_takes_the_least_recently_used_host():
    pool = _pool(2, {"A": 2, "B": 2, "C": 1})
    assert pool._borrow("A") == 0 and pool._borrow("B") == 1
    pool._give_back(1, "B")
    pool._give_back(0, "A")
    assert pool._borrow("C") == 1  # both hosts' models have units left; C must load somewhere


@pytest.mark.slow
def test_hosts_kept_from_an_ended_ray_session_or_dead_are_not_reused():
    """A scoring-only sweep keeps its hosts for the next sweep of the process. When that Ray session ends
    and a new one starts, the new driver has the same job id (01000000), so the kept hosts must not be
    taken for this session's: CI once scored 4 of 4 cells into "Failed to submit task to actor"."""
    import ray

    from tasks.hosts import _KEPT, HostPool

    resources = {"num_cpus": 1}
    try:
        ray.init(num_cpus=1, include_dashboard=False)
        with HostPool.start(1, resources, keep=True) as first:
            assert ray.get(first.hosts[0].where.remote())["pid"] > 0
        assert list(_KEPT.values()) == [first]
        ray.shutdown()
        ray.init(num_cpus=1, include_dashboard=False)
        with HostPool.start(1, resources, keep=True) as second:
            assert second is not first
            assert ray.get(second.hosts[0].where.remote(), timeout=60)["pid"] > 0
        with HostPool.start(1, resources, keep=True) as third:
            assert third is second  # within one session the kept hosts are reused
        ray.kill(third.hosts[0])  # a kept host that died: the next sweep gets a fresh pool, not "actor died"
        with HostPool.start(1, resources, keep=True) as fourth:
            assert fourth is not third
            assert ray.get(fourth.hosts[0].where.remote(), timeout=60)["pid"] > 0
    finally:
        from tasks.hosts import release_kept

        release_kept()
        ray.shutdown()


def test_units_run_longest_first_round_robin_across_models():
    from types import SimpleNamespace as NS

    from tasks.hosts import run_order

    def unit(model, task, cost):
        return NS(model=NS(identity_key=model), task=task, cost=cost)

    units = [unit("A", "arith", 1.6), unit("A", "gsm8k", 5.2), unit("A", "rte", 4.3), unit("B", "rte", 2.0),
             unit("A", "mbpp", 4.7), unit("B", "mbpp", 2.0)]
    order = [[(u.model.identity_key, u.task) for u in r] for r in run_order(units)]
    assert order == [[("A", "gsm8k"), ("B", "rte")], [("A", "mbpp"), ("B", "mbpp")], [("A", "rte")], [("A", "arith")]]
