"""Relay outputs that switch equipment power.

A restart or a crash of the agent must never switch the hall's equipment.
gpiozero does not give that by itself: under the lgpio factory (the default
on Raspberry Pi OS Bookworm and the Pi 5) ``OutputDevice(initial_value=None)``
claims the line as an output at level 0 (``gpio_claim_output(handle, gpio,
level=0)``), and ``close()`` (also run by gpiozero at interpreter exit)
claims it back as a floating input. So:

- each relay's commanded state is kept in the state folder
  (``relays.json``, written atomically and fsynced on every change);
- at start the line is claimed **at the commanded level**, in one call (for
  lgpio: ``gpio_claim_output`` with that level; other factories set the
  level with the claim as gpiozero's ``output_with_state`` does). A relay
  never commanded before keeps the level its line is found at (read as an
  input before the claim: the pull resistor on the line decides, see
  docs/hardware.md);
- at stop the line is left claimed and driven as it is: ``close`` does not
  release it, and gpiozero's own shutdown is kept from resetting it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class RelayStore:
    """``{equipment_id: on}`` in ``{state_dir}/relays.json``; None = no folder (nothing kept)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._states: dict[str, bool] = {}
        self._save_failed = False
        if self.path is not None and self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                self._states = {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, bool)}
            except (OSError, ValueError, AttributeError) as e:
                log.warning("relay states in %s unreadable (%s): relays keep the level their line is at", self.path, e)

    def get(self, equipment_id: str) -> bool | None:
        with self._lock:
            return self._states.get(equipment_id)

    def put(self, equipment_id: str, on: bool) -> None:
        with self._lock:
            if self._states.get(equipment_id) == on:
                return
            self._states[equipment_id] = on
            if self.path is None:
                return
            tmp = self.path.with_suffix(".tmp")
            try:
                with open(tmp, "w") as f:
                    json.dump(self._states, f, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                self._save_failed = False
            except OSError as e:  # the relay is switched all the same; only a restart would not know it
                if not self._save_failed:
                    log.error("relay states cannot be saved to %s (%s): a restart will keep the lines "
                              "as they are found", self.path, e)
                self._save_failed = True


def _claim_at_level(pin) -> None:
    """For lgpio pins: make gpiozero's ``output_with_state`` one claim at that level
    (lgpio's ``gpio_claim_output`` takes the level; gpiozero's default claims at 0
    and writes the level afterwards: a glitch a solid-state relay can follow)."""
    try:
        from gpiozero.pins import lgpio as gl
    except Exception:  # lgpio not installed: not that factory
        return
    if not isinstance(pin, gl.LGPIOPin):
        return

    def output_with_state(state, _pin=pin):
        gl.lgpio.gpio_claim_output(_pin.factory._handle, _pin._number, int(bool(state)))

    pin.output_with_state = output_with_state


def _keep_driven(pin) -> None:
    """gpiozero closes every pin at interpreter exit (``LGPIOPin.close`` = a floating
    input): leave a relay's line driven instead."""
    pin.close = lambda: None


class Relay:
    """A relay on a GPIO pin; ``power`` is the level it drives ("on"/"off")."""

    def __init__(self, equipment_id: str, pin, pin_factory, active_high: bool = True,
                 store: RelayStore | None = None):
        from gpiozero import Device, OutputDevice
        self.id = equipment_id
        self.store = store or RelayStore(None)
        self._lock = threading.Lock()
        factory = pin_factory
        if factory is None:  # gpiozero's default (lgpio on Bookworm); BadPinFactory where there is none
            Device.ensure_pin_factory()
            factory = Device.pin_factory
        line = factory.pin(pin)
        commanded = self.store.get(equipment_id)
        if commanded is None:
            level = bool(line.state)   # an input until now: the level the wiring holds it at
            commanded = level == active_high
            log.info("relay %s: no commanded state kept; keeping the line as found (%s)", equipment_id,
                     "on" if commanded else "off")
        _claim_at_level(line)
        self.device = OutputDevice(pin, active_high=active_high, initial_value=commanded, pin_factory=factory)
        _keep_driven(line)
        self.store.put(equipment_id, commanded)

    def set(self, on: bool) -> None:
        with self._lock:
            if on:
                self.device.on()
            else:
                self.device.off()
            self.store.put(self.id, on)

    @property
    def power(self) -> str:
        return "on" if self.device.value else "off"

    def close(self) -> None:
        """Stop using the relay (gpiozero's reservation is released); the line stays
        claimed and driven at its level."""
        try:
            self.device.close()
        except Exception:
            pass
