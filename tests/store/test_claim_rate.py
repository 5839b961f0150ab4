"""The claim rate behind a queued run's estimated wait: pure, no store needed."""

from __future__ import annotations

from asyncgate.store.base import ClaimRate


def test_no_estimate_before_two_samples_a_second_apart() -> None:
    rate = ClaimRate()
    assert rate.wait(5, 100.0) is None
    rate.observe(10, 100.0)
    rate.observe(20, 100.5)  # within the second: replaces the last sample
    assert rate.per_second(100.5) is None


def test_the_wait_is_the_runs_ahead_and_this_one_over_the_rate() -> None:
    rate = ClaimRate()
    rate.observe(0, 100.0)
    rate.observe(20, 110.0)
    assert rate.per_second(110.0) == 2.0
    assert rate.wait(9, 110.0) == 5.0
    # Nothing claimed since: the rate decays as time passes without claims.
    assert rate.per_second(120.0) == 1.0


def test_old_samples_leave_the_window_and_an_idle_queue_has_no_estimate() -> None:
    rate = ClaimRate(window=60.0)
    rate.observe(0, 0.0)
    for second in range(1, 200):
        rate.observe(second * 3, float(second))
    assert rate.per_second(199.0) == 3.0
    idle = ClaimRate()
    idle.observe(5, 0.0)
    idle.observe(5, 10.0)
    assert idle.wait(3, 10.0) is None
