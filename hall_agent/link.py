"""The MQTT link: one paho-mqtt client, its network thread and the outbox pump.

Threads (none of them ever blocks inside a paho callback):

- ``mqtt-net`` runs the network loop (select, then paho's ``loop_read`` /
  ``loop_write`` / ``loop_misc``: paho's external-loop API) and reconnects
  with exponential back-off and jitter, moving to the next of ``[mqtt] hosts``
  after a failure.  Callbacks only flip flags and queue work.  Every call that
  touches the socket (TLS ``pending`` included) holds ``_io_lock``, so the
  thread that hands an alarm to paho can write it to the socket itself at
  once (``kick``) instead of waking this thread and waiting for the GIL.
- ``mqtt-pump`` hands outbox rows to paho while connected, in order, with a
  bounded window (never more QoS 1 messages unacknowledged than the server's
  Receive Maximum), and removes them from the outbox once the broker has them:
  a PUBACK with a success reason for QoS 1; for QoS 0 a later PUBACK or
  PINGRESP on the same connection (TCP is ordered: the broker read past it).
  When a connection ends, every row not confirmed is taken back from paho and
  handed over again, in order, on the next connection.
- ``mqtt-inbox`` runs the handlers of subscribed topics (commands) and the
  reconciliation of retained alerts.

Every connect subscribes (each SUBACK checked), publishes the retained
``online`` status and, when the broker has no session for the agent
(``session present`` = 0), republishes the last retained payload of every
topic the agent owns (``hall_agent.broker.retained``); then it reads its own
retained ``alert/#`` once and hands what it saw to ``on_retained_alerts``.
The last will is ``offline``/``connection-lost``.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from . import __version__
from .broker.retained import RetainedStore
from .config import Settings
from .outbox import Outbox, Row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None


Handler = Callable[[Incoming], None]


def make_client(settings: Settings, client_id: str) -> mqtt.Client:
    """A paho client with the hall's protocol, TLS and credentials (also used by the CLI)."""
    m = settings.mqtt
    v5 = m.protocol == 5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else True)
    if m.tls:
        context = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
        if m.cert_file:
            context.load_cert_chain(str(m.cert_file), str(m.key_file) if m.key_file else None)
        if m.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client.tls_set_context(context)
        client.tls_insecure_set(m.tls_insecure)
    if m.username is not None:
        password = None
        if m.password is not None:
            password = m.password.get_secret_value()
        elif m.password_file is not None:
            password = m.password_file.read_text().strip()
        client.username_pw_set(m.username, password)
    return client


class Flight(NamedTuple):
    row: Row
    handed: int             # the callback counter when it was handed over (QoS 1: what its PUBACK proves)
    written: int | None     # QoS 0: the callback counter when it was written to the socket


@dataclass
class _Held:
    """Rows of one topic the broker refused (MQTT 5 PUBACK failure): retried with back-off, in order."""
    rows: list = field(default_factory=list)
    delay: float = 0.0
    due: float = 0.0
    reason: str = ""
    retrying: bool = False  # its first row is handed over again

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.rows.sort(key=lambda r: r.pos)


@dataclass
class _Reconcile:
    mid: int
    started: float
    acked_at: float | None = None
    last_at: float = 0.0
    seen: dict = field(default_factory=dict)


def describe_disconnect(reason_code, from_server: bool, keepalive_s: int) -> str:
    """A disconnection's cause in words (for the log and health)."""
    name = str(reason_code) if reason_code is not None else "unknown"
    if from_server:
        return f"the broker closed the connection (DISCONNECT: {name})"
    if getattr(reason_code, "value", None) == 0x8D or name.lower().startswith("keep alive"):
        return f"keepalive timeout: no answer from the broker within {keepalive_s} s"
    return f"the connection broke ({name})"


class Link:
    window = 500            # outbox rows handed to paho and not yet confirmed
    min_delay = 0.5         # reconnect back-off, seconds
    max_delay = 30.0
    stable_s = 10.0         # a connection that lasted less did not reset the back-off
    ack_settle_s = 0.005    # acknowledgements gather this long before their rows are deleted
    confirm_s = 2.0         # QoS 0 written this long and unconfirmed: ask the broker (PINGREQ)
    refused_min_s = 2.0     # a refused publication is retried after this, doubling ...
    refused_max_s = 120.0   # ... up to this
    reconcile_quiet_s = 1.0  # retained alerts are taken as complete after this long without one
    reconcile_max_s = 10.0

    def __init__(self, settings: Settings, outbox: Outbox, clock: Callable[[], str],
                 retained: RetainedStore | None = None):
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.retained = retained if retained is not None else RetainedStore(None)
        self.base = settings.base_topic
        self.status_topic = f"{self.base}/status"
        self.endpoints = settings.mqtt.endpoints
        self._endpoint = 0
        self._handlers: dict[str, Handler] = {}
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._events: deque[tuple] = deque()       # from paho's callbacks, for the pump, in order
        self._in_flight: dict[int, Flight] = {}    # paho mid -> row handed over on this connection
        self._retry: list[Row] = []                # rows taken back from a connection that ended
        self._held: dict[str, _Held] = {}          # topic -> rows the broker refused
        self._inbox: queue.Queue = queue.Queue(maxsize=1000)
        self._delay = self.min_delay
        self._pump_lock = threading.Lock()
        self._leaving = False
        self._io_lock = threading.RLock()  # paho's socket reads and writes, from any thread
        self._local = threading.local()    # .flushing: this thread writes what it publishes itself
        self._wake_r, self._wake_w = socket.socketpair()  # breaks the network thread's select
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: list[Row] = []
        self._cb = 0                       # paho callbacks counted (write order of QoS 0, PUBACKs, pings)
        self._ping_ticket: int | None = None
        self._subs: dict[int, str] = {}    # SUBACK mid -> topic filter
        self._sub_refused: dict[str, str] = {}
        self._reconcile: _Reconcile | None = None
        self._connected_since: float | None = None
        self.receive_maximum: int | None = None
        self.session_present: bool | None = None
        self.on_connected: list[Callable[[], None]] = []  # run in the network thread: must not block
        self.keep_retained: Callable[[str], bool] = lambda topic: True  # may this stored topic be republished?
        self.on_retained_alerts: Callable[[dict[str, bytes]], None] | None = None  # run in the inbox thread
        self.on_condition: Callable[[str, bool, str], None] | None = None  # (rule, active, message)
        self.counts: Counter = Counter()             # for health
        self.disconnect_reasons: Counter = Counter()
        self._threads: list[threading.Thread] = []
        self.connects = 0
        self.heartbeat = time.monotonic()  # the network loop's last turn
        self.pump_heartbeat = time.monotonic()
        self.client = self._build_client()

    # -- set-up ----------------------------------------------------------------
    def _build_client(self) -> mqtt.Client:
        client = make_client(self.settings, self.settings.client_id)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        # We run the network loop ourselves; this tells paho not to write to the
        # socket from the publishing thread but to wake our loop instead.
        client.on_socket_register_write = lambda *_: None if getattr(self._local, "flushing", False) \
            else self._wake_net()
        # paho has no callback for PINGREQ/PINGRESP: a PINGRESP proves the broker read
        # every QoS 0 message written before its PINGREQ
        send_ping, handle_pingresp = client._send_pingreq, client._handle_pingresp

        def _send_pingreq():
            rc = send_ping()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._ping_ticket = self._cb
            return rc

        def _handle_pingresp():
            rc = handle_pingresp()
            if self._ping_ticket is not None:
                self._events.append(("ping", self._ping_ticket))
                self._ping_ticket = None
                self._wake.set()
            return rc
        client._send_pingreq = _send_pingreq
        client._handle_pingresp = _handle_pingresp
        return client

    def _wake_net(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (the buffer is full of wake-ups), or shutting down

    def status_payload(self, state: str, reason: str | None, ts: str | None = None) -> bytes:
        return json.dumps({"state": state, "ts": ts or self.clock(), "version": __version__,
                           "reason": reason}).encode()

    def subscribe(self, suffix: str, handler: Handler) -> None:
        """Handle messages on ``{base}/{suffix}`` (wildcards allowed); restored on every reconnect."""
        self._handlers[f"{self.base}/{suffix}"] = handler

    def subscribe_absolute(self, topic: str, handler: Handler) -> None:
        """Handle messages on a topic outside the hall's base (Home Assistant's status)."""
        self._handlers[topic] = handler

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def broker(self) -> str:
        host, port = self.endpoints[self._endpoint]
        return f"{host}:{port}"

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("mqtt-net", self._net), ("mqtt-pump", self._pump), ("mqtt-inbox", self._run_inbox)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, drain_s: float) -> bool:
        """Publish ``offline``/``shutdown``, drain the outbox up to ``drain_s``, disconnect.
        Returns whether the outbox was emptied."""
        deadline = time.monotonic() + drain_s
        info = None
        if self.connected:
            info = self.client.publish(self.status_topic, self.status_payload("offline", "shutdown"), 1, True)
        while time.monotonic() < deadline and self.connected and (self.outbox.depth or self._in_flight):
            self._wake.set()
            time.sleep(0.02)
        drained = self.outbox.depth == 0
        if info is not None and self.connected:
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        props = None
        if self.settings.mqtt.protocol == 5:
            props = Properties(PacketTypes.DISCONNECT)
        self._leaving = True  # the disconnection that follows is ours, not a lost connection
        self.client.disconnect(properties=props)  # a clean DISCONNECT: the broker drops the last will
        self._wake_net()
        deadline = time.monotonic() + 2.0
        while self.client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)  # the network thread writes it
        self._stopping.set()
        self._wake.set()
        self._inbox.put(None)
        self._wake_net()
        for t in self._threads:
            t.join(timeout=5)
        with self._pump_lock:  # what the broker confirmed before the end leaves the outbox
            self._settle_events()
        self._remove_done()
        self._wake_r.close()
        self._wake_w.close()
        return drained

    # -- network thread ------------------------------------------------------
    def _connect_once(self) -> None:
        m = self.settings.mqtt
        host, port = self.endpoints[self._endpoint]
        # the broker cannot stamp the will when it fires: it and this connection's "online"
        # carry the same ts (the connect), so the will is never older than what it replaces
        self._connect_ts = self.clock()
        self.client.will_set(self.status_topic, self.status_payload("offline", "connection-lost",
                                                                    self._connect_ts), 1, True)
        # connect() every time (not reconnect()): the host may have changed; v5 starts clean,
        # 3.1.1 asks for a clean session: no broker keeps a session the agent cannot trust
        self.client.connect(host, port, m.keepalive_s,
                            clean_start=True if m.protocol == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)

    def _next_endpoint(self) -> None:
        if len(self.endpoints) > 1:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            log.info("MQTT: trying the next broker, %s", self.broker)

    def _net(self) -> None:
        socket_up = False
        failures = 0
        opened = 0.0
        m = self.settings.mqtt
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            # (before paho's own keepalive closes the half-made connection at keepalive_s)
            if socket_up and not self._connected.is_set() and time.monotonic() - opened > 0.8 * m.keepalive_s:
                # TCP accepted, CONNECT sent, no CONNACK: a TLS port spoken to in plain MQTT, or the reverse
                log.warning("no CONNACK from %s within %s s: is it a TLS port? tls = %s; retrying",
                            self.broker, m.keepalive_s, str(m.tls).lower())
                self.counts["connect_failed"] += 1
                self._next_endpoint()
                socket_up = False  # the next connect closes this socket
                self._connection_ended()
                self._backoff()
                continue
            if not socket_up:
                try:
                    with self._io_lock:
                        self._connect_once()
                    socket_up = True
                    opened = time.monotonic()
                    failures = 0
                except Exception as e:  # OSError, SSL, DNS, or anything paho raises: retried, never fatal
                    failures += 1
                    self.counts["connect_failed"] += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("MQTT broker %s not reachable (%s); retrying", self.broker,
                                    e if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: {e}")
                    self._next_endpoint()
                    self._backoff()
                    continue
            try:
                rc = self._turn(timeout=0.2)
            except Exception:  # a bug in a callback must not end the network thread
                log.exception("MQTT network loop error")
                rc = MQTTErrorCode.MQTT_ERR_UNKNOWN
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                socket_up = False
                self._connected.clear()
                try:
                    self._connection_ended()
                except Exception:
                    log.exception("MQTT: taking back the rows of a lost connection failed")
                if not self._stopping.is_set():
                    since = self._connected_since
                    if since is not None and time.monotonic() - since >= self.stable_s:
                        self._delay = self.min_delay  # it had worked: come back quickly
                    elif since is not None or self.connects == 0:
                        self._next_endpoint()
                    self._connected_since = None
                    self._backoff()

    def _connection_ended(self) -> None:
        """Take back from paho everything of the connection that ended: on the next one
        the rows are handed over again in order, within its Receive Maximum (paho would
        otherwise resend its own copies, as many as it holds, before we could count)."""
        with self._io_lock:
            dropped = self.client.drop_out_messages()
        with self._pump_lock:
            self._settle_events()  # what the broker confirmed before the end is done
            rows = [f.row for f in self._in_flight.values()]
            self._in_flight.clear()
            back = []
            for row in rows:
                held = self._held.get(row.topic)
                if held is not None:  # a refused row being retried: first again, after its back-off
                    held.add(row)
                    held.retrying = False
                else:
                    back.append(row)
            if back:
                self._retry = sorted(self._retry + back, key=lambda r: r.pos)
            self._reconcile = None
            self._subs.clear()
            self._ping_ticket = None
        for m in dropped:  # publish_now's replies and discovery: best effort, not kept
            try:
                m.info._set_as_published()
            except Exception:
                pass
        self._wake.set()

    def _turn(self, timeout: float) -> MQTTErrorCode:
        """One turn of the network loop (what paho's ``loop()`` does, with our lock)."""
        client = self.client
        with self._io_lock:  # pending() is an SSL call: never beside another thread's write
            sock = client.socket()
            if sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS: bytes already decrypted
            wlist = [sock] if client.want_write() else []
        try:  # select() asks the kernel about the descriptor; no SSL object is used
            readable, _, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if pending else timeout)
        except (TypeError, ValueError, OSError):  # the socket was closed under us
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except (BlockingIOError, OSError):
                pass
        with self._io_lock:
            if client.socket() is not sock:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if sock in readable or pending:
                rc = client.loop_read()
                if rc or client.socket() is None:
                    return rc or MQTTErrorCode.MQTT_ERR_CONN_LOST
            if client.want_write():
                rc = client.loop_write()
                if rc:
                    return rc
            rc = client.loop_misc()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.socket() is None:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST  # keepalive timeout: paho closed it
            return rc

    def _flush(self) -> None:
        """Write what paho holds to the socket from the calling thread (the alarm path);
        if the network thread is busy with the socket, it writes instead."""
        if self._io_lock.acquire(timeout=0.005):
            try:
                if self.client.want_write():
                    self.client.loop_write()
                if not self.client.want_write():
                    return
            finally:
                self._io_lock.release()
        self._wake_net()  # the rest (a full socket buffer, or the lock was busy) is the network thread's

    def _backoff(self) -> None:
        delay = self._delay * random.uniform(0.5, 1.5)  # jitter: halls must not reconnect in lock-step
        self._delay = min(self._delay * 2, self.max_delay)
        end = time.monotonic() + delay
        while not self._stopping.is_set() and time.monotonic() < end:
            self.heartbeat = time.monotonic()  # waiting on purpose is progress, for the watchdog
            self._stopping.wait(min(1.0, max(0.0, end - time.monotonic())))

    def _on_socket_open(self, client, userdata, sock) -> None:
        try:  # no Nagle: an alarm must not wait for the previous segment's ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.counts["connect_refused"] += 1
            hint = ""
            if self.settings.mqtt.protocol == 5 and getattr(reason_code, "value", None) in (0x84, 0x01):
                hint = " (it does not speak MQTT 5: set [mqtt] protocol = 311, or enable MQTT 5 on the broker)"
            if self.counts["connect_refused"] in (1, 2) or self.counts["connect_refused"] % 20 == 0:
                log.error("MQTT broker %s refused the connection: %s%s", self.broker, reason_code, hint)
            self.disconnect_reasons[f"connection refused: {reason_code}"] += 1
            return
        self.connects += 1
        self._connected_since = time.monotonic()
        self.session_present = bool(flags.session_present)
        rm = getattr(properties, "ReceiveMaximum", None) if self.settings.mqtt.protocol == 5 else None
        self.receive_maximum = int(rm) if rm else (65535 if self.settings.mqtt.protocol == 5 else None)
        # never more QoS 1 messages unacknowledged on the wire than the server's Receive
        # Maximum, ours and paho's own included: paho sends up to this many and keeps the rest
        # queued (not written) until PUBACKs come back; it holds nothing from the last
        # connection (``_connection_ended`` took everything back). paho's setter refuses
        # while connected, hence the attribute.
        client._max_inflight_messages = min(self.receive_maximum or self.window, self.window)
        for topic in self._handlers:  # before "online": a command sent on seeing it is not missed
            rc, mid = client.subscribe(topic, qos=1)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._subs[mid] = topic
        client.publish(self.status_topic, self.status_payload("online", None, getattr(self, "_connect_ts", None)),
                       1, True)
        republished = self._republish() if not self.session_present else 0
        self._start_reconcile()
        for hook in self.on_connected:
            try:
                hook()
            except Exception:
                log.exception("on-connect hook failed")
        log.info("connected to MQTT broker %s (%s; session present %s, receive maximum %s%s)", self.broker,
                 "reconnect" if self.connects > 1 else "first connect", int(self.session_present),
                 self.receive_maximum or "-", f"; republished {republished} retained topic(s)" if republished else "")
        self._connected.set()
        self._wake.set()

    def _republish(self) -> int:
        """The last retained payload of every topic the agent owns, as the broker last
        confirmed it (same bytes: same id and seq)."""
        n = 0
        pending = self.pending_topics()
        for topic, item in self.retained.items().items():
            if topic in pending or topic == self.status_topic:
                continue  # a newer publication is on its way; status was just published
            try:
                if not self.keep_retained(topic):
                    continue
            except Exception:
                log.exception("republish filter failed for %s", topic)
                continue
            self.client.publish(topic, item.payload, item.qos, True)
            n += 1
        self.counts["republished"] += n
        return n

    def _start_reconcile(self) -> None:
        if self.on_retained_alerts is None:
            return
        rc, mid = self.client.subscribe(f"{self.base}/alert/#", qos=1)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._reconcile = _Reconcile(mid, time.monotonic())

    def rebirth(self) -> int:
        """The ``rebirth`` command: republish every retained topic now and reconcile the alerts."""
        if not self.connected:
            return 0
        n = self._republish()
        self._start_reconcile()
        self._wake_net()
        return n

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._wake.set()
        if self._stopping.is_set() or self._leaving:
            return
        why = describe_disconnect(reason_code, flags.is_disconnect_packet_from_server, self.settings.mqtt.keepalive_s)
        self.disconnect_reasons[why] += 1
        if was:
            up = time.monotonic() - self._connected_since if self._connected_since else 0.0
            log.warning("MQTT connection to %s lost after %.1f s: %s", self.broker, up, why)
        elif self._connected_since is None:
            log.warning("MQTT connection to %s ended before the broker accepted it: %s", self.broker, why)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        rec = self._reconcile
        if rec is not None and mid == rec.mid:
            if any(getattr(rc, "is_failure", False) for rc in reason_codes):
                log.warning("the broker does not let the agent read its own %s/alert/# (%s): retained alerts "
                            "not reconciled (the broker ACL must allow it; see docs/mqtt.md)", self.base,
                            reason_codes[0])
                self._reconcile = None
                self._unsubscribe_reconcile()
            else:
                rec.acked_at = rec.last_at = time.monotonic()
            self._wake.set()
            return
        topic = self._subs.pop(mid, None)
        if topic is None:
            return
        refused = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            reason = str(refused[0])
            self.counts["subscribe_refused"] += 1
            if self._sub_refused.get(topic) != reason:
                log.error("the broker refused the subscription to %s: %s%s", topic, reason,
                          " (commands will never arrive)" if topic.endswith("/cmd") else "")
            self._sub_refused[topic] = reason
        elif topic in self._sub_refused:
            del self._sub_refused[topic]
            log.info("the broker accepted the subscription to %s again", topic)
        else:
            return
        self._events.append(("sub",))
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._cb += 1
        self._events.append(("pub", mid, reason_code, self._cb))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        rec = self._reconcile
        if rec is not None and message.topic.startswith(f"{self.base}/alert/"):
            # retained ones: what the broker held; live ones: our own publications since
            # the subscription, which the broker now shows (empty: the topic removed)
            if message.payload and (message.retain or b'"state":"cleared"' not in message.payload):
                rec.seen[message.topic] = bytes(message.payload)
            else:
                rec.seen.pop(message.topic, None)
            if message.retain:
                rec.last_at = time.monotonic()
            return  # nothing else to handle
        props = getattr(message, "properties", None)
        item = Incoming(message.topic, bytes(message.payload),
                        getattr(props, "ResponseTopic", None) if props else None,
                        getattr(props, "CorrelationData", None) if props else None)
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            log.warning("inbox full: dropped a message on %s", message.topic)

    def _unsubscribe_reconcile(self) -> None:
        topic = f"{self.base}/alert/#"
        if not any(mqtt.topic_matches_sub(f, f"{self.base}/alert/x/y") for f in self._handlers):
            self.client.unsubscribe(topic)

    def _check_reconcile(self) -> None:
        rec = self._reconcile
        if rec is None:
            return
        now = time.monotonic()
        done = rec.acked_at is not None and now - rec.last_at >= self.reconcile_quiet_s
        if not done and now - rec.started < self.reconcile_max_s:
            return
        self._reconcile = None
        self._unsubscribe_reconcile()
        self._wake_net()
        if rec.acked_at is None:
            log.warning("no SUBACK for %s/alert/# within %.0f s: retained alerts not reconciled",
                        self.base, self.reconcile_max_s)
            return
        seen = dict(rec.seen)
        hook = self.on_retained_alerts
        if hook is not None:
            try:
                self._inbox.put_nowait(lambda: hook(seen))
            except queue.Full:
                log.warning("inbox full: retained alerts not reconciled")

    # -- pump thread -----------------------------------------------------------
    def _pump(self) -> None:
        while not self._stopping.is_set():
            self.pump_heartbeat = time.monotonic()
            self._wake.wait(0.5)
            # let acknowledgements gather for a moment: fewer, larger deletes, and no
            # database work on the heels of an alarm that is still on its way out
            self._stopping.wait(self.ack_settle_s)
            self._wake.clear()
            try:
                connected = self.connected
                with self._pump_lock:
                    self._settle_events()
                self._remove_done()
                if connected:
                    self._retry_refused()
                    self._ask_confirmation()
                    self._check_reconcile()
                while connected and self._hand_over_batch():
                    connected = self.connected
                    self._remove_done()
            except Exception:  # the pump must survive anything one message can do
                log.exception("outbox pump error")
                self._stopping.wait(1.0)

    def kick(self) -> None:
        """Hand new outbox rows to paho now, from the calling thread (the alarm path
        does not wait for the pump thread to wake up)."""
        more = True
        if self.connected:
            self._local.flushing = True  # no wake-up for the network thread: it would only contend
            try:
                more = self._hand_over_batch(settle=False)  # removing acknowledged rows is the pump's job
                self._flush()  # outside the pump lock: a callback holding the I/O lock may want it
            except Exception:
                log.exception("outbox hand-over error")
                self._wake_net()
            finally:
                self._local.flushing = False
        if more:
            self._wake.set()

    def _settle_events(self) -> None:
        """Apply what paho reported, in order (under the pump lock)."""
        notify = False
        while self._events:
            ev = self._events.popleft()
            if ev[0] == "pub":
                _, mid, reason, n = ev
                flight = self._in_flight.get(mid)
                if flight is None:
                    continue
                if flight.row.qos == 0:
                    self._in_flight[mid] = flight._replace(written=n)
                    continue
                del self._in_flight[mid]
                if reason is not None and getattr(reason, "is_failure", False):
                    notify |= self._refused(flight.row, reason)
                    continue
                self._done.append(flight.row)
                self._confirm_qos0(flight.handed)
                held = self._held.get(flight.row.topic)
                if held is not None and held.retrying:  # the retried one got through: the rest follow
                    del self._held[flight.row.topic]
                    if held.rows:
                        self._retry = sorted(self._retry + held.rows, key=lambda r: r.pos)
                    log.info("the broker accepts publications on %s again", flight.row.topic)
                    notify = True
            elif ev[0] == "ping":
                self._confirm_qos0(ev[1])
            elif ev[0] == "sub":
                notify = True
        if notify:
            self._notify_conditions()

    def _confirm_qos0(self, before: int) -> None:
        """QoS 0 rows written before ``before`` are confirmed: the broker read past them."""
        confirmed = [mid for mid, f in self._in_flight.items()
                     if f.row.qos == 0 and f.written is not None and f.written <= before]
        for mid in confirmed:
            self._done.append(self._in_flight.pop(mid).row)

    def _refused(self, row: Row, reason) -> bool:
        held = self._held.get(row.topic)
        first = held is None
        if first:
            held = self._held[row.topic] = _Held()
        held.add(row)  # it goes again first, before the rows held behind it
        held.retrying = False
        held.delay = min(max(held.delay * 2, self.refused_min_s), self.refused_max_s)
        held.due = time.monotonic() + held.delay
        self.counts["publish_refused"] += 1
        if first or held.reason != str(reason):
            log.error("the broker refused a publication on %s: %s (kept; retried with back-off, %.0f s "
                      "growing to %.0f s)", row.topic, reason, self.refused_min_s, self.refused_max_s)
        held.reason = str(reason)
        return first

    def _retry_refused(self) -> None:
        """Offer the first refused row of each topic again once its back-off has passed."""
        now = time.monotonic()
        sent = False
        with self._pump_lock:
            for held in self._held.values():
                if held.retrying or not held.rows or held.due > now or not self.connected:
                    continue
                row = held.rows.pop(0)
                info = self.client.publish(row.topic, row.payload, row.qos, row.retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
                        row.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN):
                    held.add(row)
                    break
                self._in_flight[info.mid] = Flight(row, self._cb, None)
                held.retrying = True
                sent = True
        if sent:
            self._wake_net()

    def _notify_conditions(self) -> None:
        hook = self.on_condition
        if hook is None:
            return
        held = {t: h.reason for t, h in self._held.items()}
        if held:
            msg = "the broker refused publications on " + ", ".join(f"{t} ({r})" for t, r in sorted(held.items()))
        else:
            msg = "the broker accepts every publication again"
        subs = dict(self._sub_refused)
        if subs:
            smsg = "the broker refused the subscription to " + ", ".join(f"{t} ({r})" for t, r in sorted(subs.items()))
        else:
            smsg = "every subscription accepted"
        for rule, active, message in (("publish-refused", bool(held), msg), ("subscribe-refused", bool(subs), smsg)):
            try:
                self._inbox.put_nowait(lambda r=rule, a=active, m=message: hook(r, a, m))
            except queue.Full:
                log.warning("inbox full: %s not reported", rule)

    def _ask_confirmation(self) -> None:
        """QoS 0 rows written a while ago and not yet confirmed: a PINGREQ; its PINGRESP
        confirms them, and no answer within keepalive ends the connection (half-open link)."""
        if self._ping_ticket is not None:
            return
        with self._pump_lock:
            waiting = [f for f in self._in_flight.values() if f.row.qos == 0 and f.written is not None]
            if not waiting or any(f.row.qos == 1 and f.handed >= max(w.written for w in waiting)
                                  for f in self._in_flight.values()):
                return  # nothing to confirm, or a PUBACK on its way will
        if not self._io_lock.acquire(timeout=0.05):
            return
        try:
            if self.client.socket() is not None and self.client._ping_t == 0:
                self.client._send_pingreq()
        finally:
            self._io_lock.release()
        self._wake_net()

    def _remove_done(self) -> None:
        """Record confirmed retained payloads, then delete the rows (outside the pump lock:
        the alarm path may want it). Rows whose removal failed are kept for the next turn."""
        done, self._done = self._done, []
        if not done:
            return
        try:
            self.retained.update((r.topic, r.payload, r.qos) for r in done if r.retain)
            self.outbox.done([r.pos for r in done])
        except Exception:
            self._done = done + self._done  # not forgotten: removed on a later turn
            raise

    def pending_topics(self) -> set[str]:
        """Topics with a publication handed over or waiting, not yet confirmed."""
        rows = [f.row for f in list(self._in_flight.values())] + list(self._retry)
        for held in list(self._held.values()):
            rows.extend(held.rows)
        return {r.topic for r in rows}

    def _hand_over_batch(self, batch: int = 50, settle: bool = True) -> bool:
        """Publish up to ``batch`` rows in order; True if more may be waiting."""
        with self._pump_lock:
            if settle:
                self._settle_events()
            room = min(batch, self.window - len(self._in_flight))
            if room <= 0 or not self.connected:
                return False
            if self._retry:
                rows, self._retry = self._retry[:room], self._retry[room:]
            else:
                rows = self.outbox.take(room)
            for i, row in enumerate(rows):
                held = self._held.get(row.topic)
                if held is not None:  # behind a refused one of its topic: in order, after it
                    held.rows.append(row)
                    continue
                info = self.client.publish(row.topic, row.payload, row.qos, row.retain)
                kept = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                    row.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
                if not kept:  # paho did not keep it: offer it again after reconnect
                    self._retry = rows[i:] + self._retry
                    return False
                self._in_flight[info.mid] = Flight(row, self._cb, None)
            if rows and settle:
                self._wake_net()  # the pump's rows: the network thread writes them
            return len(rows) == room

    # -- inbox thread ------------------------------------------------------------
    def _run_inbox(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            if callable(item):
                try:
                    item()
                except Exception:
                    log.exception("link task failed")
                continue
            handler = self._handlers.get(item.topic) or next(
                (h for f, h in self._handlers.items() if mqtt.topic_matches_sub(f, item.topic)), None)
            if handler is None:
                continue
            try:
                handler(item)
            except Exception:
                log.exception("handler for %s failed", item.topic)

    def publish_now(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                    correlation_data: bytes | None = None) -> None:
        """Publish outside the outbox (command replies): best effort, not persisted."""
        props = None
        if correlation_data is not None and self.settings.mqtt.protocol == 5:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos, retain, properties=props)
        self._wake_net()

    def health(self) -> dict:
        """The link's part of the ``health`` envelope."""
        with self._pump_lock:
            unconfirmed = sum(1 for f in self._in_flight.values() if f.row.qos == 0 and f.written is not None)
            held = sorted(self._held)
        return {"broker": self.broker, "connected": self.connected, "connects": self.connects,
                "session_present": self.session_present, "receive_maximum": self.receive_maximum,
                "disconnects": dict(self.disconnect_reasons), "publish_refused": self.counts["publish_refused"],
                "refused_topics": held, "subscribe_refused": self.counts["subscribe_refused"],
                "refused_subscriptions": sorted(self._sub_refused), "qos0_unconfirmed": unconfirmed,
                "republished": self.counts["republished"], "retained_topics": len(self.retained),
                "connect_failures": self.counts["connect_failed"]}
