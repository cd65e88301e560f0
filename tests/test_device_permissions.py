"""Issue 22.6: a bus or port the agent may not open is a permission problem, not an absent part.

Plain Debian leaves /dev/i2c-* root:root 0600; the agent reported every I2C sensor as
"absent ... did not acknowledge (EACCES)", which sent a technician to the wiring. These
tests open a real root-only node as an unprivileged user (CI is root)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")


def as_nobody(tmp_path, code: str) -> str:
    """Run ``code`` as nobody with argv[1] a root:root 0600 node in a folder it may enter."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="hall-agent-perm-", dir="/tmp")  # tmp_path's parents are 0700
    try:
        os.chmod(folder, 0o755)
        node = os.path.join(folder, "node")
        open(node, "w").close()
        os.chmod(node, 0o600)  # root:root 0600, like /dev/i2c-1 on plain Debian
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                            "-c", textwrap.dedent(code), node], capture_output=True, text=True, timeout=60,
                           cwd=folder, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_an_i2c_bus_the_agent_may_not_open_is_a_permission_fault(tmp_path):
    out = as_nobody(tmp_path, """
        import sys, smbus2
        real = smbus2.SMBus
        smbus2.SMBus = lambda n: real(sys.argv[1])   # the real open(2) of a root-only node
        from hall_agent.hardware import LazySMBus
        from hall_agent.sensors.sht3x import SHT3x
        from hall_agent.sensors.base import SensorError
        s = SHT3x(bus=LazySMBus(1), address=0x44)
        try:
            s.start(); s.read()
        except SensorError as e:
            print(e.kind, e.reason)
    """)
    kind, reason = out.strip().split(" ", 1)
    assert kind == "permission", out
    assert "/dev/i2c-1" in reason and "EACCES" in reason and "not at fault" in reason


def test_a_serial_port_the_agent_may_not_open_is_a_permission_fault(tmp_path):
    out = as_nobody(tmp_path, """
        import sys
        from hall_agent.sensors.uart import SerialPort
        from hall_agent.sensors.base import SensorError
        try:
            SerialPort(sys.argv[1], model="pms5003").write(b"x")
        except SensorError as e:
            print(e.kind, e.reason)
    """)
    kind, reason = out.strip().split(" ", 1)
    assert kind == "permission" and "EACCES" in reason, out
