"""The clock seam: a FakeClock moves wall and monotonic time the way a test needs."""

from datetime import timezone

import pytest

from hall_agent.clock import FakeClock, SystemClock

pytestmark = pytest.mark.timeout(10)


def test_step_moves_only_the_wall_clock():
    c = FakeClock(wall=1_000_000.0, mono=50.0)
    c.step(-3600)
    assert c.time() == 1_000_000.0 - 3600
    assert c.monotonic() == 50.0
    c.advance(2.5)
    assert (c.time(), c.monotonic()) == (1_000_000.0 - 3600 + 2.5, 52.5)
    assert c.now(timezone.utc).timestamp() == c.time()


def test_system_clock_remembers_a_positive_sync_and_survives_a_failing_probe():
    answers = iter([False, True, False])
    c = SystemClock(sync_probe=lambda: next(answers), probe_every_s=0)
    assert c.synced() is False
    assert c.synced() is True
    assert c.synced() is True  # not asked again

    def boom():
        raise OSError("adjtimex filtered")
    assert SystemClock(sync_probe=boom).synced() is False


def test_system_clock_asks_an_unsynchronised_probe_at_most_every_few_seconds():
    calls = []
    c = SystemClock(sync_probe=lambda: calls.append(1) or False, probe_every_s=3600)
    for _ in range(100):  # every envelope asks
        assert c.synced() is False
    assert len(calls) == 1
