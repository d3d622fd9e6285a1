"""Which model host takes a unit (tasks/hosts.py, `HostPool._choose`), without starting Ray: a host keeps its
model while more units of it are coming, one model's units spread over idle hosts, and a unit waits only
for a busy host that holds its model."""

import threading

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
