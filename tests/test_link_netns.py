"""The link across a real network cut (issue 17.2): the agent in a network
namespace of its own, joined to the broker by a veth pair, and the link cut
without FIN or RST by the ``blackhole`` qdisc on both ends (this kernel has no
netem). QoS 0 readings and health written into the dead socket are not lost:
they count as delivered only once a later PUBACK or PINGRESP proves the broker
read past them, and go again after the reconnect. Root only (CI is root)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from mqtt_helpers import Broker, Recorder, wait_until, write_config

BASE = "halls/zigong/ziliujing/zg-001"
NS = f"hallnet{os.getpid() % 100000}"
HOST_IF, NS_IF = f"hn{os.getpid() % 100000}a", f"hn{os.getpid() % 100000}b"
HOST_IP, NS_IP = "10.231.77.1", "10.231.77.2"


def sh(*cmd, check=True):
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace and a veth pair (CI runs as root)")
    if not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("needs iproute2 (ip, tc)")
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        yield
    finally:
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", NS, check=False)


def cut(on: bool):
    """Drop every packet both ways: no FIN, no RST, the sockets stay open."""
    verb = "add" if on else "del"
    sh("tc", "qdisc", verb, "dev", HOST_IF, "root", *(["blackhole"] if on else []))
    sh("ip", "netns", "exec", NS, "tc", "qdisc", verb, "dev", NS_IF, "root", *(["blackhole"] if on else []))


def test_half_open_link_loses_no_qos0_reading_or_health(netns, tmp_path):
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener 0 {HOST_IP}\nlistener 0 127.0.0.1\nallow_anonymous true\n"))
    # two listeners: the agent's (on the veth) and the test's consumer (loopback)
    broker.port = None
    conf = broker.write_conf()
    conf.write_text(conf.read_text().replace("listener 0 " + HOST_IP, f"listener {(hp := _port())} {HOST_IP}")
                    .replace("listener 0 127.0.0.1", f"listener {(lp := _port())} 127.0.0.1"))
    broker.proc = subprocess.Popen([broker_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    broker.port = lp
    assert wait_until(broker._accepts, 10)
    cfg = write_config(tmp_path / "c.toml", hp, tmp_path / "state", """
[agent]
health_interval_s = 1
[[sensors]]
id = "t.hall"
driver = "sht3x"
interval_s = 0.5
""")
    cfg.write_text(cfg.read_text().replace('host = "127.0.0.1"', f'host = "{HOST_IP}"')
                   .replace("drain_s = 3", "drain_s = 3\nkeepalive_s = 5"))
    rec = Recorder(lp, [f"{BASE}/#"])
    env = {**os.environ, "HALL_AGENT_SIM_DAY": "0"}
    agent = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "hall_agent", "run", "-c", str(cfg),
                              "--simulate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        online = lambda r: [s for s in r.payloads("/status") if s["state"] == "online"]
        assert rec.wait_for(lambda r: online(r) and len(r.payloads("/telemetry/t.hall")) >= 4, 20)
        cut(True)
        cut_at = time.monotonic()
        # the broker sees nothing for 1.5 x keepalive and publishes the last will
        assert rec.wait_for(lambda r: any(s["reason"] == "connection-lost" for s in r.payloads("/status")), 30)
        will_after = time.monotonic() - cut_at
        time.sleep(max(0.0, 12 - will_after))  # the agent notices (keepalive) and keeps reading meanwhile
        cut(False)
        n_online = len(online(rec))
        assert rec.wait_for(lambda r: len(online(r)) > n_online, 40), "the agent did not come back"
        time.sleep(4)  # readings flow again; what was written into the dead socket is sent again
        seqs = set()
        for m in list(rec.messages):
            if m.payload and not m.topic.endswith("/status") and not m.topic.endswith("/cmd"):
                doc = json.loads(m.payload)
                if isinstance(doc, dict) and "seq" in doc:
                    seqs.add(doc["seq"])
        first, last = min(seqs), max(seqs)
        missing = sorted(set(range(first, last + 1)) - seqs)
        assert not missing, f"seqs lost across the half-open link: {missing}"
        print(f"last will {will_after:.1f} s after the cut (keepalive 5 s); seqs {first}-{last} all delivered")
    finally:
        try:
            cut(False)
        except subprocess.CalledProcessError:
            pass
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        rec.close()
        broker.stop()


def _port():
    from mqtt_helpers import free_port
    return free_port()


def broker_bin():
    from mqtt_helpers import MOSQUITTO
    return MOSQUITTO
