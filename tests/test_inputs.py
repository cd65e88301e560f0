"""Inputs on gpiozero's mock pins: polarity, debounce, state at boot, the panic latch."""

import time

import pytest
from hypothesis import given, settings, strategies as st
from gpiozero.pins.mock import MockFactory

from hall_agent.config.models import InputConfig
from hall_agent.devices import Debouncer, InputWatcher, PanicLatch
from hall_agent.devices.inputs import PulseFilter
from hall_agent.emulators.gpio import contact_factory, late_factory
from mqtt_helpers import wait_until


class Changes(list):
    def __call__(self, change):
        self.append((change.id, change.state))


def watcher(factory, changes, **cfg):
    cfg.setdefault("id", "door.side")
    cfg.setdefault("kind", "door")
    cfg.setdefault("pin", 17)
    return InputWatcher(InputConfig(**cfg), factory, changes)


@pytest.mark.parametrize("contact,pull_up,closed_level_low", [("no", True, True), ("nc", True, True),
                                                              ("no", False, False), ("nc", False, False)])
def test_polarity_no_nc_pull_up_down(contact, pull_up, closed_level_low):
    factory = contact_factory()
    pin = factory.pin(17)
    pin.contact_closed = contact == "nc"  # at rest: NO open, NC closed
    changes = Changes()
    w = watcher(factory, changes, contact=contact, pull_up=pull_up, bounce_ms=0)
    assert w.state == "closed" and w.boot_state().state == "closed"
    pin.set_contact(contact == "no")  # the door opens: an NO contact closes, an NC contact opens
    assert pin.state == (not closed_level_low if contact == "no" else closed_level_low)
    assert changes == [("door.side", "open")]
    pin.set_contact(contact == "nc")
    assert changes == [("door.side", "open"), ("door.side", "closed")]


def test_state_at_boot_reports_a_door_already_open():
    factory = contact_factory()
    factory.pin(17).contact_closed = False  # NC contact open: the door is open at boot
    changes = Changes()
    w = watcher(factory, changes, contact="nc")
    boot = w.boot_state()
    assert (boot.state, boot.at_boot) == ("open", True) and changes == []


def test_door_bounce_is_suppressed_to_one_change():
    factory = MockFactory()
    pin = factory.pin(17)
    changes = Changes()
    w = watcher(factory, changes, contact="no", bounce_ms=40)  # pulled up: high = contact open = closed door
    for _ in range(5):  # a bouncing contact: 10 edges within 10 ms
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()  # ... settling closed-contact = door open
    assert changes == []  # nothing until it holds for bounce_ms
    assert wait_until(lambda: changes == [("door.side", "open")], 1)
    time.sleep(0.1)
    assert changes == [("door.side", "open")]


def test_panic_reacts_on_the_first_edge_and_latches():
    factory = MockFactory()
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50, min_pulse_ms=0)
    assert w.state == "normal"
    t0 = time.perf_counter()
    pin.drive_low()  # pressed: reported at once, in the edge callback (no min_pulse)
    assert changes == [("panic.1", "alarm")] and time.perf_counter() - t0 < 0.05
    for _ in range(5):  # bounce on press
        pin.drive_high()
        pin.drive_low()
    pin.drive_high()  # released
    time.sleep(0.1)
    assert changes == [("panic.1", "alarm")] and w.state == "alarm"  # latched through release
    assert w.reset() is None
    assert changes[-1] == ("panic.1", "normal")
    assert w.reset() == "not in alarm"


def test_panic_reset_refused_while_still_pressed():
    factory = MockFactory()
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, bounce_ms=0)
    pin.drive_low()
    assert "still pressed" in w.reset()          # still being measured (min_pulse 10 ms)
    assert wait_until(lambda: w.state == "alarm", 1)
    assert "still pressed" in w.reset()
    assert w.state == "alarm"


def test_panic_pressed_at_boot_is_an_alarm():
    factory = contact_factory()
    factory.pin(22).contact_closed = False  # NC loop open at boot (pressed, or a cut wire)
    w = watcher(factory, Changes(), id="panic.1", kind="panic", pin=22, contact="nc")
    assert w.boot_state().state == "alarm"


@pytest.mark.parametrize("edges,expected", [
    # (time, level) edges; leading-edge debounce with 50 ms lock-out
    ([(0.000, True), (0.001, False), (0.002, True)], [True]),
    ([(0.000, True), (0.060, False)], [True, False]),
    ([(0.000, True), (0.010, False)], [True]),  # the release inside the lock-out waits for settle
])
def test_leading_debouncer_table(edges, expected):
    d = Debouncer(0.05, leading=True, initial=False)
    out = [c for t, level in edges if (c := d.edge(level, t)) is not None]
    assert out == expected


def test_leading_debouncer_settles_a_release_inside_the_lockout():
    d = Debouncer(0.05, leading=True, initial=False)
    assert d.edge(True, 0.0) is True
    assert d.edge(False, 0.01) is None
    assert d.settle(False, 0.05) is False  # at the end of the lock-out the pin is read again


def test_trailing_debouncer_table():
    d = Debouncer(0.05, leading=False, initial=False)
    assert d.edge(True, 0.0) is None and d.edge(False, 0.01) is None and d.edge(True, 0.02) is None
    assert d.settle(True, 0.03) is None  # too early
    assert d.settle(True, 0.07) is True
    assert d.settle(True, 0.2) is None


def test_latch_logic():
    latch = PanicLatch()
    assert latch.update(True) is True and latch.update(True) is False
    latch.update(False)
    assert latch.alarm and latch.reset() is None and not latch.alarm


# -- late callbacks (lgpio), each edge with its own level; min_pulse_ms -----------------------

def test_panic_press_shorter_than_the_callback_delay_still_latches():
    """lgpio runs callbacks ~50 ms after the edge: when the press edge's callback runs the
    button is already released. The edge's own level must latch the alarm (issue 13.7)."""
    factory = late_factory(0.05)
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50)
    assert w.cfg.min_pulse_ms == 10
    pin.drive_low()          # pressed ...
    time.sleep(0.015)        # ... for 15 ms (>= min_pulse 10 ms)
    pin.drive_high()         # released, before the first callback has run
    assert pin.drain() and wait_until(lambda: changes == [("panic.1", "alarm")], 1), changes
    time.sleep(0.1)
    assert changes == [("panic.1", "alarm")] and w.state == "alarm"
    assert w.reset() is None and w.state == "normal"


@pytest.mark.parametrize("delay_s", [0.0, 0.05])
def test_panic_glitch_shorter_than_min_pulse_is_not_an_alarm(delay_s):
    factory = late_factory(delay_s)
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50)
    pin.drive_low()
    pin.drive_high()         # a pulse of microseconds: a glitch on the loop
    assert pin.drain()
    time.sleep(0.35)         # past min_pulse and the lost-edge grace
    assert changes == [] and w.state == "normal" and w.pulses.glitches == 1


def test_panic_held_press_is_an_alarm_after_min_pulse_while_still_pressed():
    factory = late_factory(0.0)
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50, min_pulse_ms=10)
    pin.drive_low()          # held down
    assert wait_until(lambda: changes == [("panic.1", "alarm")], 1) and w.state == "alarm"


def test_panic_without_min_pulse_latches_on_the_activation_edge_even_if_pin_reads_released():
    factory = late_factory(0.05)
    pin = factory.pin(22)
    changes = Changes()
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50, min_pulse_ms=0)
    pin.drive_low()
    pin.drive_high()
    assert pin.drain() and changes == [("panic.1", "alarm")] and w.state == "alarm"


def test_door_open_and_closed_between_two_late_callbacks_gives_both_changes():
    factory = late_factory(0.05)
    pin = factory.pin(17)
    changes = Changes()
    w = watcher(factory, changes, contact="no", bounce_ms=10)
    pin.drive_low()          # NO contact closes: door open
    time.sleep(0.03)         # held 30 ms > bounce_ms
    pin.drive_high()         # closed again before the first callback runs
    assert pin.drain() and wait_until(lambda: changes == [("door.side", "open"), ("door.side", "closed")], 1), changes
    assert w.state == "closed"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12), st.integers(0, 20))
def test_pulse_filter_passes_exactly_the_pulses_at_least_min_pulse_long(widths_ms, min_ms):
    """Alternating press/release edges 100 ms apart with the given press widths."""
    f = PulseFilter(min_ms / 1000.0)
    out, t = [], 0.0
    for w in widths_ms:
        out += f.edge(True, t)
        out += f.edge(False, t + w / 1000.0)
        t += 0.1
    presses = [at for level, at in out if level]
    expected = [i * 0.1 for i, w in enumerate(widths_ms) if w >= min_ms]
    assert presses == pytest.approx(expected)
    assert f.glitches == sum(1 for w in widths_ms if w < min_ms)
    assert [level for level, _ in out] == [True, False] * len(expected)


def test_pulse_filter_expires_a_press_still_held_or_whose_release_edge_is_lost():
    f = PulseFilter(0.01, grace_s=0.25)
    assert f.edge(True, 1.0) == [] and f.due() == pytest.approx(1.01)
    assert f.expire(1.005, pin_active=True) == []           # too early
    assert f.expire(1.02, pin_active=False) == []           # released: wait for the release edge
    assert f.expire(1.3, pin_active=False) == [(True, 1.0)]  # the release edge never came: safe side
    assert f.edge(True, 2.0) == [] and f.expire(2.011, pin_active=True) == [(True, 2.0)]
    assert f.edge(False, 2.5) == [(False, 2.5)]


def test_min_pulse_defaults():
    assert InputConfig(id="p", kind="panic", pin=1).min_pulse_ms == 10
    assert InputConfig(id="d", kind="door", pin=1).min_pulse_ms == 0
    assert InputConfig(id="r", kind="reset", pin=1, min_pulse_ms=5).min_pulse_ms == 5


def test_short_press_on_gpiozeros_lgpio_factory_with_late_alerts():
    """The same on gpiozero's real LGPIOFactory: lgpio's alert thread reports each
    edge 50 ms late as (chip, gpio, level, timestamp_ns)."""
    from lgpio_fake import FakeChip, lgpio_factory
    chip = FakeChip(delay_s=0.05)
    chip.line(22).external = 1               # NO contact open, pulled up
    changes = Changes()
    with lgpio_factory(chip) as factory:
        w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50)
        chip.set_external(22, 0)             # pressed ...
        time.sleep(0.015)
        chip.set_external(22, 1)             # ... released before the first alert is delivered
        assert chip.drain() and wait_until(lambda: changes == [("panic.1", "alarm")], 1), changes
        chip.set_external(22, 0)
        chip.set_external(22, 1)             # a glitch of microseconds
        assert chip.drain()
        time.sleep(0.35)
        assert changes == [("panic.1", "alarm")] and w.pulses.glitches == 1
        assert w.reset() is None and w.state == "normal"
        w.close()
