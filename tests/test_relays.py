"""Relays never switch at a start or a stop (issue 15.1), on gpiozero's real
LGPIOFactory over a stand-in lgpio whose output claim is lgpio's: level 0
unless told otherwise, and whose close() floats the line."""

import json
import os

import pytest

from hall_agent.devices.relays import Relay, RelayStore
from lgpio_fake import FakeChip, lgpio_factory

PIN = 23


def levels_from_claim(chip):
    return chip.history.get(PIN, [])


@pytest.mark.parametrize("active_high,found", [(True, 1), (True, 0), (False, 0), (False, 1)])
def test_first_start_keeps_the_line_at_the_level_it_is_found(tmp_path, active_high, found):
    chip = FakeChip()
    chip.line(PIN).external = found          # the pull resistor holds the line here before the agent
    store = RelayStore(tmp_path / "relays.json")
    with lgpio_factory(chip) as factory:
        relay = Relay("kiosk.1", PIN, factory, active_high=active_high, store=store)
        assert levels_from_claim(chip) == [found]          # claimed at that level, in one call
        assert relay.power == ("on" if bool(found) == active_high else "off")
    assert json.loads((tmp_path / "relays.json").read_text()) == {"kiosk.1": bool(found) == active_high}


def test_restart_claims_at_the_commanded_level_and_stop_leaves_it_driven(tmp_path):
    chip = FakeChip()
    chip.line(PIN).external = 0              # pulled low: undriven the relay would be off
    path = tmp_path / "relays.json"
    with lgpio_factory(chip) as factory:     # first run: switched on by a check or a command
        relay = Relay("kiosk.1", PIN, factory, store=RelayStore(path))
        relay.set(True)
        relay.close()                        # the agent stops ...
        assert chip.line(PIN).output and chip.line(PIN).driven == 1
    # ... and gpiozero's own shutdown (factory.close at exit) did not float it either
    assert chip.line(PIN).output and chip.line(PIN).driven == 1
    chip.line(PIN).output = False            # whatever the kernel does with a freed line: it floats low
    chip.history[PIN] = []
    with lgpio_factory(chip) as factory:     # the restart
        relay = Relay("kiosk.1", PIN, factory, store=RelayStore(path))
        assert levels_from_claim(chip) == [1] and relay.power == "on"
        relay.set(False)
        assert levels_from_claim(chip) == [1, 0]
    assert json.loads(path.read_text()) == {"kiosk.1": False}


def test_a_store_that_cannot_be_written_still_switches(tmp_path, caplog):
    ro = tmp_path / "ro"
    ro.mkdir()
    chip = FakeChip()
    store = RelayStore(ro / "relays.json")
    os.chmod(ro, 0o500)
    try:
        with lgpio_factory(chip) as factory:
            relay = Relay("kiosk.1", PIN, factory, store=store)
            if os.geteuid() == 0:            # root writes anyway: make the target a directory
                (ro / "relays.tmp").mkdir()
            relay.set(True)
            relay.set(False)
            assert relay.power == "off" and levels_from_claim(chip) == [0, 1, 0]
    finally:
        os.chmod(ro, 0o700)
    assert sum("cannot be saved" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_unreadable_store_keeps_lines_as_found(tmp_path):
    path = tmp_path / "relays.json"
    path.write_text("{not json")
    chip = FakeChip()
    chip.line(PIN).external = 1
    with lgpio_factory(chip) as factory:
        relay = Relay("kiosk.1", PIN, factory, store=RelayStore(path))
        assert relay.power == "on" and levels_from_claim(chip) == [1]
