"""The clock seam: a FakeClock moves wall and monotonic time the way a test needs."""

from datetime import timezone

import pytest

from hall_agent.clock import FakeClock, SystemClock
from mqtt_helpers import wait_until

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
    assert c.synced() is False  # the first question waits for the probe
    c.synced()                  # later ones start it in the background
    assert wait_until(c.synced, 5)
    assert c.synced() is True   # not asked again

    def boom():
        raise OSError("adjtimex filtered")
    assert SystemClock(sync_probe=boom).synced() is False


def test_system_clock_asks_an_unsynchronised_probe_at_most_every_few_seconds():
    calls = []
    c = SystemClock(sync_probe=lambda: calls.append(1) or False, probe_every_s=3600)
    for _ in range(100):  # every envelope asks
        assert c.synced() is False
    assert len(calls) == 1


def test_a_slow_probe_never_holds_up_an_envelope():
    """timedatectl may take seconds: after the first question, callers answer at once."""
    import threading
    import time
    release = threading.Event()
    calls = []

    def slow():
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
            return True
        return False
    c = SystemClock(sync_probe=slow, probe_every_s=0)
    assert c.synced() is False
    started = time.monotonic()
    for _ in range(50):
        assert c.synced() is False
    assert time.monotonic() - started < 5 and len(calls) == 2  # not the 10 s probe; one at a time
    release.set()
    assert wait_until(c.synced, 5)
