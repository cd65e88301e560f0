"""The ESC/POS printer's real-time status over a real pty."""

import pytest

from hall_agent.config.models import PrinterConfig
from hall_agent.devices import EscPosStatusReader, PrinterMonitor, decode
from hall_agent.emulators.escpos import EscPosPrinter


@pytest.fixture
def printer():
    p = EscPosPrinter()
    yield p
    p.close()


def test_decode_status_bytes_from_the_epson_reference():
    clear = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12}
    assert decode(clear).as_dict() == {"online": True, "paper": "ok", "cover_open": False, "error": None}
    assert decode({**clear, 1: 0x1A}).online is False                        # n=1 bit 3: offline
    assert decode({**clear, 2: 0x16}).cover_open is True                     # n=2 bit 2: cover open
    assert decode({**clear, 2: 0x32}).paper == "end"                         # n=2 bit 5: stopped at paper end
    assert decode({**clear, 2: 0x52}).error == "error"                       # n=2 bit 6: error
    assert decode({**clear, 3: 0x1A}).error == "autocutter error"            # n=3 bit 3
    assert decode({**clear, 3: 0x16}).error == "mechanical error"            # n=3 bit 2
    assert decode({**clear, 3: 0x32}).error == "unrecoverable error"         # n=3 bit 5
    assert decode({**clear, 3: 0x52}).error.startswith("auto-recoverable")   # n=3 bit 6
    assert decode({**clear, 4: 0x1E}).paper == "near_end"                    # n=4 bits 2-3
    assert decode({**clear, 4: 0x72}).paper == "end"                         # n=4 bits 5-6
    assert decode({**clear, 4: 0x7E}).paper == "end"


@pytest.mark.parametrize("state,expected", [
    ({}, {"online": True, "paper": "ok", "cover_open": False, "error": None}),
    ({"paper": "near_end"}, {"online": True, "paper": "near_end", "cover_open": False, "error": None}),
    ({"paper": "end"}, {"online": False, "paper": "end", "cover_open": False, "error": None}),
    ({"cover_open": True}, {"online": False, "paper": "ok", "cover_open": True, "error": None}),
    ({"online": False}, {"online": False, "paper": "ok", "cover_open": False, "error": None}),
    ({"error": "autocutter"}, {"online": False, "paper": "ok", "cover_open": False, "error": "autocutter error"}),
])
def test_each_condition_over_the_pty(printer, state, expected):
    printer.set(**state)
    assert EscPosStatusReader(printer.port, timeout_s=0.5).read().as_dict() == expected
    assert printer.requests[-4:] == [b"\x10\x04\x01", b"\x10\x04\x02", b"\x10\x04\x03", b"\x10\x04\x04"]


def test_garbage_is_skipped_and_silence_is_not_paper_ok(printer):
    reader = EscPosStatusReader(printer.port, timeout_s=0.3)
    printer.fault = "garbage"
    printer.set(paper="near_end")
    assert reader.read().paper == "near_end" and reader.skipped >= 4
    printer.fault = None
    printer.set(responding=False)
    state = reader.read()
    assert state.online is False and "no status reply within 0.3 s" in state.error


def test_reconnects_after_the_port_goes_and_comes_back(printer):
    reader = EscPosStatusReader(printer.port, timeout_s=0.3)
    assert reader.read().online
    printer.unplug()
    gone = reader.read()
    assert not gone.online and "not answering" in gone.error
    assert "cannot open" in reader.read().error
    printer.replug()
    assert reader.read().online


def test_monitor_reports_changes_only(printer):
    seen = []
    cfg = PrinterConfig(id="printer.queue", port=printer.port, timeout_s=0.3, poll_s=0.2)
    monitor = PrinterMonitor(cfg, printer.port, lambda pid, st: seen.append(st.paper))
    monitor.poll()
    monitor.poll()
    printer.set(paper="near_end")
    monitor.poll()
    monitor.poll()
    assert seen == ["ok", "near_end"]
