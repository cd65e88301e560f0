"""Inputs on gpiozero's mock pins: polarity, debounce, state at boot, the panic latch."""

import time

import pytest
from gpiozero.pins.mock import MockFactory

from hall_agent.config.models import InputConfig
from hall_agent.devices import Debouncer, InputWatcher, PanicLatch
from hall_agent.emulators.gpio import contact_factory
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
    w = watcher(factory, changes, id="panic.1", kind="panic", pin=22, contact="no", bounce_ms=50)
    assert w.state == "normal"
    t0 = time.perf_counter()
    pin.drive_low()  # pressed: reported at once, in the edge callback
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
