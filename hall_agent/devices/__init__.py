"""Devices: GPIO inputs and relays (gpiozero), the ESC/POS ticket printer
(pyserial) and networked equipment probes."""

from .equipment import EquipmentMonitor, ProbeResult, probe
from .inputs import Debouncer, InputChange, InputWatcher, PanicLatch
from .printer import EscPosStatusReader, PrinterMonitor, PrinterState, decode
from .relays import Relay

__all__ = ["Debouncer", "EquipmentMonitor", "EscPosStatusReader", "InputChange", "InputWatcher", "PanicLatch",
           "PrinterMonitor", "PrinterState", "ProbeResult", "Relay", "decode", "probe"]
