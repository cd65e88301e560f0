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


def test_decode_presenter_bit_and_missing_n():
    """Byte vectors from the manuals. PPU-231II DLE EOT n=4: bit 5 paper-end sensor,
    bit 6 presenter sensor; an Epson sets bits 5 and 6 at paper end."""
    clear = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12}
    assert decode({**clear, 4: 0x52}).paper == "ok"          # presenter empty only: paper is fine
    assert decode({**clear, 4: 0x32}).paper == "end"         # bit 5: paper end
    assert decode({**clear, 4: 0x5E}).paper == "near_end"    # near end + presenter empty
    no4 = decode({1: 0x12, 2: 0x12, 3: 0x12})                # CBM-820: no n=4
    assert no4.as_dict() == {"online": True, "paper": "unknown", "cover_open": False, "error": None}
    assert decode({1: 0x12, 2: 0x32, 3: 0x12}).paper == "end"  # n=2 bit 5 still tells paper end
    only1 = decode({1: 0x12})
    assert only1.as_dict() == {"online": True, "paper": "unknown", "cover_open": None, "error": None}


def test_an_n_that_never_answers_is_learnt_unsupported_not_offline():
    p = EscPosPrinter(unsupported={4})                        # a Citizen CBM-820
    try:
        reader = EscPosStatusReader(p.port, timeout_s=0.2)
        states = [reader.read() for _ in range(4)]
        assert all(s.online and s.answering and s.paper == "unknown" for s in states)
        assert reader.unsupported == {4}
        p.requests.clear()
        p.set(paper="end")                                    # n=2 bit 5 still says it
        assert reader.read().paper == "end"
        assert b"\x10\x04\x04" not in p.requests              # no longer asked
    finally:
        p.close()


def test_presenter_printer_is_not_out_of_paper_when_its_presenter_is_empty():
    p = EscPosPrinter(presenter=True)
    try:
        reader = EscPosStatusReader(p.port, timeout_s=0.3)
        assert p.presenter_empty and reader.read().paper == "ok"
        p.set(paper="end")
        assert reader.read().paper == "end"
    finally:
        p.close()


def test_one_late_reply_is_not_offline_but_fault_after_silent_polls_are():
    p = EscPosPrinter()
    seen = []
    try:
        cfg = PrinterConfig(id="printer.queue", port=p.port, timeout_s=0.2, poll_s=0.2)
        assert cfg.fault_after == 3
        monitor = PrinterMonitor(cfg, p.port, lambda pid, st: seen.append(st.as_dict()))
        monitor.poll()
        p.set(lag_s=0.4)                                      # printing a ticket: the reply comes late
        monitor.poll()
        p.set(lag_s=0.0)
        monitor.poll()
        assert [s["online"] for s in seen] == [True]          # no offline for one late reply
        p.set(responding=False)
        for _ in range(2):
            monitor.poll()
        assert len(seen) == 1
        monitor.poll()                                        # the third silent poll in a row
        assert seen[-1]["online"] is False and seen[-1]["paper"] == "unknown"  # never "ok" for what was not read
        assert seen[-1]["cover_open"] is None
    finally:
        monitor.reader.close()
        p.close()


def test_unsupported_is_learnt_after_exactly_3_silent_polls_and_a_reply_resets_the_count():
    p = EscPosPrinter(unsupported={4})
    try:
        reader = EscPosStatusReader(p.port, timeout_s=0.15)
        reader.read()
        reader.read()
        assert reader.unsupported == set()                    # 2 misses: not yet
        p.unsupported = set()                                 # it answers after all (it was busy)
        assert reader.read().paper == "ok"
        p.unsupported = {4}
        reader.read()
        reader.read()
        assert reader.unsupported == set()                    # the count started again
        reader.read()
        assert reader.unsupported == {4}
    finally:
        p.close()


def test_a_missing_n2_does_not_stop_n3_and_n4_from_being_asked():
    p = EscPosPrinter(unsupported={2})
    try:
        reader = EscPosStatusReader(p.port, timeout_s=0.15)
        for _ in range(3):
            reader.read()
        assert reader.unsupported == {2}
        p.set(error="autocutter", paper="near_end")
        state = reader.read()
        assert state.error == "autocutter error" and state.paper == "near_end" and state.cover_open is None
    finally:
        p.close()
