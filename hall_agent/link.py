"""The MQTT link: one paho-mqtt client, its network thread and the outbox pump.

Threads (none of them ever blocks inside a paho callback):

- ``mqtt-net`` runs the network loop (select, then paho's ``loop_read`` /
  ``loop_write`` / ``loop_misc``: paho's external-loop API) and reconnects
  with exponential back-off and jitter.  Callbacks only flip flags and queue
  work.  Every call that touches the socket holds ``_io_lock``, so the thread
  that hands an alarm to paho can write it to the socket itself at once
  (``kick``) instead of waking this thread and waiting for the GIL.
- ``mqtt-pump`` hands outbox rows to paho while connected, in order, with a
  bounded window, and removes them from the outbox once paho reports them
  sent (PUBACK for QoS 1, written to the socket for QoS 0).  QoS 1 messages
  that were in flight when the connection dropped are re-sent by paho itself
  on reconnect; after a restart the outbox replays them.
- ``mqtt-inbox`` runs the handlers of subscribed topics (commands).

Every (re)connect publishes the retained ``online`` status and restores the
subscriptions; the last will is ``offline``/``connection-lost``.
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
from collections import deque
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from . import __version__
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


class Link:
    window = 500            # outbox rows handed to paho and not yet confirmed
    min_delay = 0.5         # reconnect back-off, seconds
    max_delay = 30.0
    ack_settle_s = 0.005    # acknowledgements gather this long before their rows are deleted

    def __init__(self, settings: Settings, outbox: Outbox, clock: Callable[[], str]):
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.base = settings.base_topic
        self.status_topic = f"{self.base}/status"
        self._handlers: dict[str, Handler] = {}
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._acks: deque[int] = deque()
        self._in_flight: dict[int, Row] = {}  # paho mid -> row
        self._retry: list[Row] = []           # QoS 0 rows lost with a connection
        self._inbox: queue.Queue[Incoming | None] = queue.Queue(maxsize=1000)
        self._delay = self.min_delay
        self._pump_lock = threading.Lock()
        self._leaving = False
        self._io_lock = threading.RLock()  # paho's socket reads and writes, from any thread
        self._local = threading.local()    # .flushing: this thread writes what it publishes itself
        self._wake_r, self._wake_w = socket.socketpair()  # breaks the network thread's select
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: list[int] = []
        self.on_connected: list[Callable[[], None]] = []  # run in the network thread: must not block
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
        client.on_socket_open = self._on_socket_open
        # We run the network loop ourselves; this tells paho not to write to the
        # socket from the publishing thread but to wake our loop instead.
        client.on_socket_register_write = lambda *_: None if getattr(self._local, "flushing", False) \
            else self._wake_net()
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
        self._wake_r.close()
        self._wake_w.close()
        return drained

    # -- network thread ------------------------------------------------------
    def _connect_once(self) -> None:
        m = self.settings.mqtt
        # the broker cannot stamp the will when it fires: it and this connection's "online"
        # carry the same ts (the connect), so the will is never older than what it replaces
        self._connect_ts = self.clock()
        self.client.will_set(self.status_topic, self.status_payload("offline", "connection-lost",
                                                                    self._connect_ts), 1, True)
        if self.connects == 0 and not self.client.host:
            self.client.connect(m.host, m.effective_port, m.keepalive_s,
                                clean_start=True if m.protocol == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        else:
            self.client.reconnect()

    def _net(self) -> None:
        socket_up = False
        failures = 0
        opened = 0.0
        m = self.settings.mqtt
        while not self._stopping.is_set():
            self.heartbeat = time.monotonic()
            if socket_up and not self._connected.is_set() and time.monotonic() - opened > m.keepalive_s:
                # TCP accepted, CONNECT sent, no CONNACK: a TLS port spoken to in plain MQTT, or the reverse
                log.warning("no CONNACK from %s:%s within %s s: is it a TLS port? tls = %s; retrying",
                            m.host, m.effective_port, m.keepalive_s, str(m.tls).lower())
                socket_up = False  # the next connect (reconnect) closes this socket
                self._backoff()
                continue
            if not socket_up:
                try:
                    with self._io_lock:
                        self._connect_once()
                    socket_up = True
                    opened = time.monotonic()
                except (OSError, ValueError, ssl.SSLError) as e:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("MQTT broker %s:%s not reachable (%s); retrying",
                                    self.settings.mqtt.host, self.settings.mqtt.effective_port, e)
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
                if not self._stopping.is_set():
                    self._backoff()

    def _turn(self, timeout: float) -> MQTTErrorCode:
        """One turn of the network loop (what paho's ``loop()`` does, with our lock)."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS: bytes already decrypted
        wlist = [sock] if client.want_write() else []
        try:
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
            return client.loop_misc()

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
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        self._delay = self.min_delay
        for topic in self._handlers:  # before "online": a command sent on seeing it is not missed
            client.subscribe(topic, qos=1)
        client.publish(self.status_topic, self.status_payload("online", None, getattr(self, "_connect_ts", None)),
                       1, True)
        for hook in self.on_connected:
            try:
                hook()
            except Exception:
                log.exception("on-connect hook failed")
        log.info("connected to MQTT broker %s:%s (%s)", self.settings.mqtt.host,
                 self.settings.mqtt.effective_port, "reconnect" if self.connects > 1 else "first connect")
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._wake.set()
        if was and not (self._stopping.is_set() or self._leaving):
            log.warning("MQTT connection lost: %s", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append(mid)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        props = getattr(message, "properties", None)
        item = Incoming(message.topic, bytes(message.payload),
                        getattr(props, "ResponseTopic", None) if props else None,
                        getattr(props, "CorrelationData", None) if props else None)
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            log.warning("inbox full: dropped a message on %s", message.topic)

    # -- pump thread -----------------------------------------------------------
    def _pump(self) -> None:
        was_connected = False
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
                    self._settle_acks()
                    if connected and not was_connected:
                        self._requeue_lost_qos0()
                self._remove_done()
                was_connected = connected
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

    def _settle_acks(self) -> None:
        done = []
        while self._acks:
            row = self._in_flight.pop(self._acks.popleft(), None)
            if row is not None:
                done.append(row.pos)
        self._done.extend(done)

    def _remove_done(self) -> None:
        """Delete acknowledged rows (outside the pump lock: the alarm path may want it)."""
        done, self._done = self._done, []
        self.outbox.done(done)

    def _requeue_lost_qos0(self) -> None:
        # paho forgets QoS 0 packets not yet written when the socket closes
        lost = [mid for mid, row in self._in_flight.items() if row.qos == 0]
        self._retry = [self._in_flight.pop(mid) for mid in lost] + self._retry

    def _hand_over_batch(self, batch: int = 50, settle: bool = True) -> bool:
        """Publish up to ``batch`` rows in order; True if more may be waiting."""
        with self._pump_lock:
            if settle:
                self._settle_acks()
            room = min(batch, self.window - len(self._in_flight))
            if room <= 0 or not self.connected:
                return False
            if self._retry:
                rows, self._retry = self._retry[:room], self._retry[room:]
            else:
                rows = self.outbox.take(room)
            for i, row in enumerate(rows):
                info = self.client.publish(row.topic, row.payload, row.qos, row.retain)
                held = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                    row.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
                if not held:  # paho did not keep it: offer it again after reconnect
                    self._retry = rows[i:] + self._retry
                    return False
                self._in_flight[info.mid] = row
            if rows and settle:
                self._wake_net()  # the pump's rows: the network thread writes them
            return len(rows) == room

    # -- inbox thread ------------------------------------------------------------
    def _run_inbox(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
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
