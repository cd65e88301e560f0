"""The alarm path when the state folder's disk fails, end to end (issue 13 item 1):
the panic reaches the broker, storage-failed says so, no thread dies, and it all
resumes (nothing held in memory lost) when the disk comes back. First with the
outbox's fault seam in-process, then (as root) with real file systems: a small
tmpfs filled with dd, and a loop-mounted ext4 with errors=remount-ro made
read-only by the kernel's trigger_fs_error."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import hall_agent.outbox as ob
from hall_agent.agent import Agent
from hall_agent.config import validate

from mqtt_helpers import AgentProcess, Recorder, free_port, publish, wait_until, write_config, CLOSED_HOURS

BASE = "halls/zigong/ziliujing/zg-001"
PARTS = """
[[sensors]]
id = "co2.a"
driver = "mhz19"
port = "/dev/ttyUSB0"
interval_s = 1

[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
"""


def settings_for(port: int, state: Path):
    return validate({
        "hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
        "mqtt": {"host": "127.0.0.1", "port": port, "drain_s": 2}, "storage": {"dir": str(state)},
        "hours": {d: "closed" for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                        "sunday")} | {"holidays": ""},
        "sensors": [{"id": "co2.a", "driver": "mhz19", "port": "/dev/ttyUSB0", "interval_s": 1}],
        "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"}],
    })


def alert_docs(rec, rule, source="panic.1"):
    return [json.loads(m.payload) for m in rec.messages if m.topic == f"{BASE}/alert/{rule}/{source}" and m.payload]


class Broken:
    def __init__(self, error: Exception):
        self.error = error
        self.armed = threading.Event()

    def __call__(self, site: str) -> None:
        if self.armed.is_set():
            raise self.error


@pytest.mark.parametrize("error", [sqlite3.OperationalError("database or disk is full"),
                                   sqlite3.OperationalError("disk I/O error"),
                                   sqlite3.OperationalError("database is locked")], ids=["full", "io", "locked"])
def test_panic_goes_out_while_every_write_fails_and_all_resumes(broker, tmp_path, monkeypatch, error):
    monkeypatch.setattr(ob, "RETRY_S", 0.2)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/telemetry/#", f"{BASE}/cmd/reply",
                                 f"{BASE}/state/#"])
    agent = Agent(settings_for(broker.port, tmp_path / "state"), simulate=True)
    broken = Broken(error)
    agent.outbox.fault = broken
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        assert rec.wait_for(lambda r: r.on("/telemetry/co2.a"), 15)
        broken.armed.set()
        agent.hardware.control("input", "panic.1", b"pressed", agent.devices)
        assert rec.wait_for(lambda r: alert_docs(r, "panic"), 10), "the panic was lost with the disk"
        assert rec.wait_for(lambda r: alert_docs(r, "storage-failed", "outbox"), 10)
        failed = alert_docs(rec, "storage-failed", "outbox")[0]
        assert failed["severity"] == "critical" and failed["moment"] == {"category": "system", "priority": 1}
        assert str(error) in failed["data"]["message"]
        # the sensor threads live on and their readings still go out
        seen = len(rec.on("/telemetry/co2.a"))
        assert rec.wait_for(lambda r: len(r.on("/telemetry/co2.a")) >= seen + 2, 10)
        assert all(r._thread.is_alive() for r in agent.sensors.runners.values())
        publish(broker.port, f"{BASE}/cmd", '{"id":"st","command":"status"}')
        assert rec.wait_for(lambda r: r.payloads("/cmd/reply"), 10)
        status = rec.payloads("/cmd/reply")[0]["result"]
        assert status["storage"]["ok"] is False and str(error) in status["storage"]["error"]
        assert ("panic", "panic.1") in {(a["rule"], a["source"]) for a in status["alerts"]}
        # the disk comes back: storage-failed clears, what memory held is written
        broken.armed.clear()
        assert rec.wait_for(lambda r: any(d["data"]["state"] == "cleared"
                                          for d in alert_docs(r, "storage-failed", "outbox")), 10)
        assert wait_until(lambda: agent.outbox.held_in_memory == 0 and agent.outbox.failed is None, 5)
        assert "alert/panic/panic.1" in agent.outbox.state_items("alert/")
    finally:
        agent.stop()
    # a restart holds the panic (its state was written once the disk came back): not raised twice
    agent = Agent(settings_for(broker.port, tmp_path / "state"), simulate=True)
    try:
        agent.alerts.load()
        assert ("panic", "panic.1") in agent.engine.active
        assert ("storage-failed", "outbox") not in agent.engine.active
    finally:
        agent.outbox.close()
        agent.hardware.close()
        rec.close()


# -- real file systems (root) ------------------------------------------------------------------

def need_root():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a loop ext4 needs root (CI runs as root)")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def unmount(where: Path) -> None:
    """Unmount, waiting for the last user to let go; lazily as a last resort."""
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(where)], check=False)


@contextmanager
def small_tmpfs(where: Path, size: str = "3m"):
    need_root()
    where.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        unmount(where)


@contextmanager
def loop_ext4(where: Path, image: Path, size_mb: int = 16):
    need_root()
    if not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("mkfs.ext4 or losetup missing (e2fsprogs, mount)")
    where.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", str(image))
    dev = run("losetup", "--find", "--show", str(image))
    try:
        run("mount", "-o", "errors=remount-ro", dev, str(where))
        try:
            yield where, dev
        finally:
            unmount(where)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)
        wait_until(lambda: dev not in run("losetup", "-a"), 10)


def read_only(folder: Path) -> bool:
    """Whether writes fail with EROFS (newer kernels mark it "emergency_ro", not in statvfs)."""
    try:
        (folder / ".probe").write_text("")
    except OSError as e:
        return e.errno == 30
    return False


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def test_disk_full_on_a_real_tmpfs(broker, tmp_path):
    """The state folder on a 3 MB tmpfs that dd fills while the agent runs."""
    with small_tmpfs(tmp_path / "state") as state:
        cfg = write_config(tmp_path / "c.toml", broker.port, state, CLOSED_HOURS + 'holidays = ""\n' + PARTS)
        rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/telemetry/#", f"{BASE}/status"])
        agent = AgentProcess(cfg, "--simulate").start()
        try:
            assert rec.wait_for(lambda r: r.on("/telemetry/co2.a"), 20), agent.output()
            filler = fill(state)
            publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
            assert rec.wait_for(lambda r: alert_docs(r, "panic"), 10), "the panic was lost with the disk"
            assert rec.wait_for(lambda r: alert_docs(r, "storage-failed", "outbox"), 15)
            seen = len(rec.on("/telemetry/co2.a"))
            assert rec.wait_for(lambda r: len(r.on("/telemetry/co2.a")) >= seen + 2, 10)  # threads alive
            filler.unlink()
            assert rec.wait_for(lambda r: any(d["data"]["state"] == "cleared"
                                              for d in alert_docs(r, "storage-failed", "outbox")), 15)
            assert agent.terminate() == 0
        finally:
            agent.kill()
            rec.close()
        db = sqlite3.connect(state / "outbox.sqlite3")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT key FROM state WHERE key LIKE 'alert/%'").fetchall() == [("alert/panic/panic.1",)]
        finally:
            db.close()


def run_once(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hall_agent", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=45, env=AgentProcess(cfg).env)


def test_a_full_disk_at_start_after_a_clean_stop_is_one_line_and_exit_2(tmp_path):
    """Item 2: the outbox cannot even be opened (SQLite cannot make its shared-memory
    file): one line, exit 2; the healthy outbox is not taken for corrupt, and once
    space is freed everything in it is there."""
    with small_tmpfs(tmp_path / "state") as state:
        cfg = write_config(tmp_path / "c.toml", free_port(), state, CLOSED_HOURS)  # no broker: rows stay
        agent = AgentProcess(cfg).start()
        assert wait_until(lambda: (state / "outbox.sqlite3.seq").exists(), 15)
        time.sleep(1.0)
        assert agent.terminate() == 0
        before = {p.name: p.read_bytes() for p in state.iterdir()}
        filler = fill(state)
        proc = run_once(cfg)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("storage error:") and "Traceback" not in proc.stderr, lines
        assert "full" in lines[0]
        filler.unlink()
        after = {p.name: p.read_bytes() for p in state.iterdir()}
        assert {n: after.get(n) for n in before} == before  # nothing set aside, deleted or changed
        assert not [n for n in after if "corrupt" in n]  # (SQLite may leave an empty -wal/-shm behind)
        box = ob.Outbox(state / "outbox.sqlite3")
        try:
            kinds = [json.loads(r.payload)["data"].get("event") for r in box.take(100)]
            assert kinds[:2] == ["started", "stopping"] and box.set_aside is None and box.skipped is None
        finally:
            box.close()


def test_a_full_disk_at_start_with_a_readable_outbox_runs_as_when_it_fills(broker, tmp_path):
    """Item 2, the other case: after a crash the outbox's files are there and it can be
    read: the agent runs, sends what it holds, and says storage-failed."""
    with small_tmpfs(tmp_path / "state") as state:
        cfg = write_config(tmp_path / "c.toml", free_port(), state, CLOSED_HOURS)  # no broker: rows stay
        agent = AgentProcess(cfg).start()
        assert wait_until(lambda: (state / "outbox.sqlite3.seq").exists(), 15)
        time.sleep(1.0)
        agent.kill()  # the WAL and its shared memory stay
        filler = fill(state)
        cfg = write_config(tmp_path / "c.toml", broker.port, state, CLOSED_HOURS)
        rec = Recorder(broker.port, [f"{BASE}/event", f"{BASE}/alert/#"])
        agent = AgentProcess(cfg).start()
        try:
            assert rec.wait_for(lambda r: alert_docs(r, "storage-failed", "outbox"), 20), agent.output()
            assert rec.wait_for(lambda r: len([e for e in r.payloads("/event")
                                               if e["data"].get("event") == "started"]) == 2, 10)
            events = [e["data"].get("event") for e in rec.payloads("/event")]
            assert "outbox-corrupt" not in events and "seq-skipped" in events
            assert agent.terminate() == 0
        finally:
            agent.kill()
            rec.close()
        filler.unlink()
        assert not list(state.glob("*.corrupt-*"))


def test_read_only_disk_remounted_by_a_real_ext4_error(broker, tmp_path):
    """The state folder on a loop ext4 (errors=remount-ro); the kernel's trigger_fs_error
    makes it read-only as a failing SD card does. The panic still goes out, storage-failed
    says why, and SIGTERM still publishes offline/shutdown and exits 0."""
    with loop_ext4(tmp_path / "state", tmp_path / "disk.img") as (state, dev):
        trigger = Path(f"/sys/fs/ext4/{Path(dev).name}/trigger_fs_error")
        if not trigger.exists():
            pytest.skip(f"{trigger} missing: this kernel has no trigger_fs_error")
        cfg = write_config(tmp_path / "c.toml", broker.port, state, CLOSED_HOURS + 'holidays = ""\n' + PARTS)
        rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/telemetry/#", f"{BASE}/status"])
        agent = AgentProcess(cfg, "--simulate").start()
        try:
            assert rec.wait_for(lambda r: r.on("/telemetry/co2.a"), 20), agent.output()
            trigger.write_text("1")
            assert wait_until(lambda: read_only(state), 10), "not remounted read-only"
            publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
            assert rec.wait_for(lambda r: alert_docs(r, "panic"), 10), "the panic was lost with the disk"
            assert rec.wait_for(lambda r: alert_docs(r, "storage-failed", "outbox"), 15)
            seen = len(rec.on("/telemetry/co2.a"))
            assert rec.wait_for(lambda r: len(r.on("/telemetry/co2.a")) >= seen + 2, 10)
            assert agent.terminate() == 0, agent.output()
            statuses = [json.loads(m.payload) for m in rec.messages if m.topic == f"{BASE}/status"]
            assert rec.wait_for(lambda r: any(json.loads(m.payload).get("reason") == "shutdown"
                                              for m in r.messages if m.topic == f"{BASE}/status"), 5), statuses
        finally:
            agent.kill()
            rec.close()


# -- item 9: the rest of the storage faults ------------------------------------------------------

def as_nobody(cfg: Path, *args: str, command: str = "run") -> subprocess.CompletedProcess:
    """The agent as an unprivileged user (uid 65534), as the service runs."""
    need_root()
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing (util-linux)")
    import site
    root = Path(__file__).resolve().parent.parent
    paths = [str(root)] + [p for p in site.getsitepackages() if "site-packages" in p]
    env = {**AgentProcess(cfg).env, "PYTHONPATH": ":".join(paths), "HOME": "/tmp"}
    return subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           "/usr/bin/python3", "-m", "hall_agent", command, "-c", str(cfg), *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/tmp")


def test_an_outbox_owned_by_another_user_is_one_line_and_doctor_says_so(tmp_path):
    """An outbox left by a run as root: the service (another user) gets one clear line and
    exit 2, not a traceback; doctor names the file, its owner and the fix."""
    need_root()
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="hall-agent-owner-"))  # pytest's own folders are root's alone
    top.chmod(0o755)
    try:
        owned_by_root(top)
    finally:
        shutil.rmtree(top)


def owned_by_root(top: Path) -> None:
    state = top / "state"
    state.mkdir()
    box = ob.Outbox(state / "outbox.sqlite3")  # as root
    box.close()
    (state / "outbox.sqlite3").chmod(0o600)
    os.chown(state, 65534, 65534)
    cfg = write_config(top / "c.toml", free_port(), state, CLOSED_HOURS)
    cfg.chmod(0o644)
    proc = as_nobody(cfg)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "outbox.sqlite3" in lines[0] and "uid 0" in lines[0] and "chown" in lines[0]
    doctor = as_nobody(cfg, command="doctor")
    assert doctor.returncode == 1
    line = next(line for line in doctor.stdout.splitlines() if "outbox.sqlite3" in line)
    assert "owner uid 0" in line and "chown" in doctor.stdout


def test_doctor_finds_a_corrupt_outbox(tmp_path):
    from hall_agent import doctor
    state = tmp_path / "s"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"not a database" * 300)
    findings = doctor.check_storage(state)
    assert [f.what for f in findings if not f.ok] == ["outbox"]
    (state / "outbox.sqlite3").unlink()
    assert all(f.ok for f in doctor.check_storage(state)) or any(f.what == "state disk" for f in
                                                                  doctor.check_storage(state))


def test_damaged_state_files_are_set_aside_not_overwritten(tmp_path):
    from hall_agent.fleet.files import StateFile
    f = tmp_path / "fleet.json"
    f.write_text("{half a docu")
    assert StateFile(f).load() == {}
    assert not f.exists() and [p.read_text() for p in tmp_path.glob("fleet.json.damaged-*")] == ["{half a docu"]


def test_a_hung_sensor_read_does_not_keep_the_process_alive(tmp_path):
    """A driver whose read never returns: the process still exits once stopped."""
    script = tmp_path / "hang.py"
    script.write_text("""
import threading, time
from hall_agent.sensors.loop import SensorLoop, SensorSpec

class Hung:
    def start(self): pass
    def read(self): threading.Event().wait()  # never returns
    def close(self): pass

loop = SensorLoop([SensorSpec("s", "m", 0.2, 3, Hung, timeout_s=0.3)], lambda *a: None, lambda *a: None,
                  lambda *a: None)
loop.start()
time.sleep(1.0)
loop.stop()
print("stopped", flush=True)
""")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stderr
    assert time.monotonic() - started < 20  # (before: the interpreter waited for the read forever)


AUTO_EQUIPMENT = """
[[equipment]]
id = "kiosk.1"
probe = "tcp://127.0.0.1:9"
relay_pin = 5
power = "auto"
"""


def test_a_one_shot_check_holds_the_state_folders_lock_while_it_runs(tmp_path):
    """Item 8: a service started while `hall-agent check` runs does not share its outbox."""
    cfg = write_config(tmp_path / "c.toml", free_port(), tmp_path / "state",
                       CLOSED_HOURS + "[checks]\nsettle_s = 6\n" + AUTO_EQUIPMENT)
    env = AgentProcess(cfg).env
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "agent.lock").touch()  # the service has run here before
    # the closing check switches the kiosk off, then waits settle_s for it
    check = subprocess.Popen([sys.executable, "-m", "hall_agent", "check", "closing", "-c", str(cfg),
                              "--simulate", "--no-publish"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        from hall_agent.oneshot import agent_running
        assert wait_until(lambda: agent_running(tmp_path / "state"), 20)  # the check holds the lock
        run = subprocess.run([sys.executable, "-m", "hall_agent", "run", "-c", str(cfg), "--simulate"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert check.poll() is None, "the check ended before the service tried to start"
        assert run.returncode == 2 and "another hall-agent already runs" in run.stderr, run.stderr[-2000:]
        out, err = check.communicate(timeout=60)
        assert check.returncode in (0, 1) and "closing check:" in out, err[-2000:]
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()


def test_corruption_met_while_running_is_reported_and_the_active_alerts_published_again(broker, tmp_path,
                                                                                         monkeypatch):
    """Item 3: SQLite says the file is corrupt on a write after open: the agent sets it aside,
    says outbox-corrupt (critical) and publishes its active alerts again (their retained
    topics and their state live on in the new outbox)."""
    monkeypatch.setattr(ob, "RETRY_S", 0.2)
    rec = Recorder(broker.port, [f"{BASE}/alert/#", f"{BASE}/event"])
    agent = Agent(settings_for(broker.port, tmp_path / "state"), simulate=True)
    once = threading.Event()

    def corrupt_once(site):
        if site == "commit" and once.is_set():
            once.clear()
            raise sqlite3.DatabaseError("database disk image is malformed")

    agent.outbox.fault = corrupt_once
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        agent.hardware.control("input", "panic.1", b"pressed", agent.devices)
        assert rec.wait_for(lambda r: alert_docs(r, "panic"), 10)
        once.set()
        agent.emit(agent.events.agent("after", {}))  # meets the "corruption"
        corrupt = lambda r: [e for e in r.payloads("/event") if e["data"].get("event") == "outbox-corrupt"]
        assert rec.wait_for(corrupt, 10)
        assert corrupt(rec)[0]["severity"] == "critical" and corrupt(rec)[0]["moment"]["priority"] == 1
        assert rec.wait_for(lambda r: len(alert_docs(r, "panic")) >= 2, 10)  # published again
        assert list((tmp_path / "state").glob("outbox.sqlite3.corrupt-*"))
        assert wait_until(lambda: agent.outbox.failed is None, 5)
        assert "alert/panic/panic.1" in agent.outbox.state_items("alert/")
        events = [e["data"].get("event") for e in rec.payloads("/event")]
        assert "after" in events  # held in memory, then written to the new outbox and sent
    finally:
        agent.stop()
        rec.close()
