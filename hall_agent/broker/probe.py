"""``doctor``'s broker conformance probe (issue 17.5): what the agent needs from a
broker, tried for real against the configured one, each failure said in plain
words with what would break.

1. MQTT 5 accepted (else only 3.1.1: publish refusals cannot be seen).
2. QoS 1 PUBACK, with a success reason code.
3. A retained message on a topic with ``.`` under the hall's own base
   (``{base}/probe/doctor.check``), read back through a wildcard subscription
   (``{base}/probe/#``) with its exact topic and the retain flag (NATS 2.9
   rejects ``.``; RabbitMQ 3.10 rewrites it to ``/`` and sends no retained
   messages to wildcard subscribers).
4. The last will: a second connection with a will on ``{base}/probe/will``
   dropped without DISCONNECT; the broker must publish the will.

The probe uses its own client ids (``{client_id}-probe``, ``-probe-will``), never
the agent's, and removes its retained message afterwards. The broker ACL must
let the hall read ``{base}/probe/#`` (deploy/mosquitto does).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..config import Settings


@dataclass(frozen=True)
class Result:
    ok: bool
    what: str
    detail: str
    fix: str = ""


class _Session:
    def __init__(self, settings: Settings, host: str, port: int, client_id: str, protocol: int, will=None):
        from ..link import make_client
        self.client = make_client(settings, client_id)
        if protocol != settings.mqtt.protocol:  # the fallback to 3.1.1: a client of that version
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=True)
            _copy_auth(settings, self.client)
        self.connected = threading.Event()
        self.rc = None
        self.props = None
        self.messages: list = []
        self.acks: dict[int, object] = {}
        self.subacks: dict[int, list] = {}
        self.cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.dropped = threading.Event()
        if will is not None:
            self.client.will_set(*will)
        self.host, self.port = host, port

    def _on_connect(self, c, u, flags, rc, props):
        self.rc, self.props = rc, props
        self.connected.set()

    def _on_disconnect(self, c, u, flags, rc, props):
        self.dropped.set()
        with self.cond:
            self.cond.notify_all()

    def _on_message(self, c, u, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, props):
        with self.cond:
            self.acks[mid] = rc
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props):
        with self.cond:
            self.subacks[mid] = list(rcs)
            self.cond.notify_all()

    def start(self, keepalive: int, timeout: float) -> bool:
        self.client.connect(self.host, self.port, keepalive)
        self.client.loop_start()
        return self.connected.wait(timeout)

    def wait(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self, clean: bool = True) -> None:
        try:
            if clean:
                self.client.disconnect()
            self.client.loop_stop()
        except Exception:
            pass


def _copy_auth(settings: Settings, client: mqtt.Client) -> None:
    m = settings.mqtt
    if m.tls:
        from ..link import make_client
        ctx = make_client(settings, "x")._ssl_context
        client.tls_set_context(ctx)
        client.tls_insecure_set(m.tls_insecure)
    if m.username is not None:
        pw = m.password.get_secret_value() if m.password is not None else (
            m.password_file.read_text().strip() if m.password_file is not None else None)
        client.username_pw_set(m.username, pw)


def probe(settings: Settings, host: str, port: int, timeout_s: float = 5.0) -> list[Result]:
    base = settings.base_topic
    where = f"{host}:{port}"
    out: list[Result] = []
    cid = f"{settings.client_id}-probe"
    protocol = settings.mqtt.protocol
    s = _Session(settings, host, port, cid, protocol)
    try:
        up = s.start(30, timeout_s)
    except Exception as e:
        return [Result(False, f"broker conformance {where}", f"cannot connect: {e}",
                       "see the 'broker' line above")]
    if protocol == 5 and (not up or (s.rc is not None and s.rc.is_failure)):
        why = f"refused ({s.rc})" if up else f"no CONNACK within {timeout_s:g} s"
        s.close(clean=False)
        s = _Session(settings, host, port, cid, 311)
        try:
            up = s.start(30, timeout_s)
        except Exception:
            up = False
        if up and not s.rc.is_failure:
            out.append(Result(False, "broker MQTT 5", f"{where}: MQTT 5 {why}; MQTT 3.1.1 works",
                              "set [mqtt] protocol = 311 (the agent then cannot see a publish the broker's ACL "
                              "refuses: with 3.1.1 such messages are lost silently), or enable MQTT 5 on the broker"))
            protocol = 311
        else:
            return [Result(False, "broker MQTT 5", f"{where}: MQTT 5 {why}, and 3.1.1 failed too",
                           "see the 'broker' line above")]
    elif not up or s.rc.is_failure:
        s.close(clean=False)
        return [Result(False, f"broker conformance {where}", f"cannot connect ({s.rc})", "see the 'broker' line above")]
    else:
        if protocol == 5:
            rm = getattr(s.props, "ReceiveMaximum", None)
            out.append(Result(True, "broker MQTT 5", f"{where}: accepted" + (f", receive maximum {rm}" if rm else "")))
        else:
            out.append(Result(True, "broker MQTT 3.1.1", f"{where}: accepted (protocol = 311: refused publishes "
                                                         "cannot be seen; prefer 5 where the broker offers it)"))
    try:
        token = uuid.uuid4().hex[:12].encode()
        topic = f"{base}/probe/doctor.check"
        info = s.client.publish(topic, token, 1, True)
        acked = s.wait(lambda: info.mid in s.acks or s.dropped.is_set(), timeout_s) and info.mid in s.acks
        if s.dropped.is_set() and not acked:
            s.client.loop_stop()  # paho would reconnect and send it again, for ever
            out.append(Result(False, "broker topics with '.'", f"the broker closed the connection when the hall "
                              f"published on {topic}",
                              "this broker rejects '.' in topic names (NATS 2.9 does): hall, sensor and input "
                              "ids with '.' cannot be used and the agent would reconnect for ever; use a broker "
                              "that accepts them (mosquitto, aedes), or ids without '.'"))
            return out
        if not acked:
            out.append(Result(False, "broker QoS 1", f"no PUBACK within {timeout_s:g} s for {topic}",
                              "the broker does not acknowledge QoS 1: every event would be sent again forever"))
        else:
            rc = s.acks[info.mid]
            if getattr(rc, "is_failure", False):
                out.append(Result(False, "broker QoS 1", f"the broker refused {topic}: {rc}",
                                  f"the ACL must let the hall write under {base}/#"))
            else:
                out.append(Result(True, "broker QoS 1", "PUBACK received"))
        sub_rc, mid = s.client.subscribe(f"{base}/probe/#", 1)
        s.wait(lambda: mid in s.subacks, timeout_s)
        granted = s.subacks.get(mid, [])
        got = lambda: [m for m in s.messages if m.payload == token]
        if granted and getattr(granted[0], "is_failure", False):
            out.append(Result(False, "broker retained + wildcard", f"subscription to {base}/probe/# refused: "
                              f"{granted[0]}", f"the ACL must let the hall read {base}/probe/# and {base}/alert/#"))
        elif not s.wait(lambda: any(m.retain for m in got()), timeout_s) and not got():
            out.append(Result(False, "broker retained + wildcard",
                              f"the retained message on {topic} did not come back through {base}/probe/#",
                              "a broker that sends no retained messages to wildcard subscriptions (RabbitMQ 3.10) "
                              "cannot show a consumer the hall's state, alerts and status after it connects; "
                              f"if the broker is mosquitto, the ACL must let the hall read {base}/probe/#"))
        else:
            m = next((m for m in got() if m.retain), got()[0])  # aedes may add a live copy
            if m.topic != topic:
                out.append(Result(False, "broker retained + wildcard", f"published on {topic}, came back as {m.topic}",
                                  "this broker rewrites '.' in topics (RabbitMQ maps it to '/'): hall, sensor and "
                                  "input ids with '.' would not match their topics; use another broker"))
            elif not m.retain:
                out.append(Result(False, "broker retained + wildcard", "came back without the retain flag",
                                  "the broker does not keep retained messages"))
            else:
                out.append(Result(True, "broker retained + wildcard", f"{topic} retained and read back via "
                                                                      f"{base}/probe/#"))
        clear = s.client.publish(topic, b"", 1, True)  # leave nothing behind
        s.wait(lambda: clear.mid in s.acks, timeout_s)
        out.append(_will(settings, host, port, protocol, s, timeout_s))
    finally:
        s.close()
    return out


def _will(settings: Settings, host: str, port: int, protocol: int, watcher: _Session, timeout_s: float) -> Result:
    base = settings.base_topic
    topic = f"{base}/probe/will"
    token = uuid.uuid4().hex[:12].encode()
    w = _Session(settings, host, port, f"{settings.client_id}-probe-will", protocol, will=(topic, token, 1, False))
    try:
        if not w.start(30, timeout_s) or w.rc.is_failure:
            return Result(False, "broker last will", "the second probe connection failed", "")
        sock = w.client.socket()
        w.client.loop_stop()
        try:  # vanish without DISCONNECT, as a hall that loses power
            sock.shutdown(2)
        except OSError:
            pass
        sock.close()
        if watcher.wait(lambda: any(m.topic == topic and m.payload == token for m in watcher.messages),
                        timeout_s + 2):
            return Result(True, "broker last will", "published when a connection dropped without DISCONNECT")
        return Result(False, "broker last will", f"no will on {topic} within {timeout_s + 2:g} s of a dropped "
                      "connection", "the central side would never see a hall go offline (status stays online)")
    finally:
        w.close(clean=False)


def check(settings: Settings, timeout_s: float = 5.0) -> list[Result]:
    """Every configured broker ([mqtt] hosts: each member of the cluster)."""
    out: list[Result] = []
    for host, port in settings.mqtt.endpoints:
        out.extend(probe(settings, host, port, timeout_s))
    return out
