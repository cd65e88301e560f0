"""A small MQTT 5 server for tests that need a broker to misbehave on purpose:
it enforces a Receive Maximum (DISCONNECT 0x93 "Receive Maximum exceeded" as
EMQX does), can hold its PUBACKs, and can accept a connection and drop it at
once. Written from the MQTT 5.0 specification (OASIS, sections 2-3); it shares
nothing with the agent or paho."""

from __future__ import annotations

import socket
import struct
import threading
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


class FakeServer:
    def __init__(self, receive_maximum: int = 10, ack: bool = True, drop_after_connack: bool = False,
                 ack_delay: float = 0.02):
        self.receive_maximum = receive_maximum
        self.ack = ack
        self.drop_after_connack = drop_after_connack
        self.ack_delay = ack_delay
        self.lock = threading.Lock()
        self.published: list[tuple[str, bytes, int]] = []  # (topic, payload, qos), in arrival order
        self.connections: list[float] = []                 # monotonic time of each CONNECT
        self.violations = 0
        self.max_in_flight = 0
        self.pings = 0
        self._clients: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self, port: int | None = None) -> "FakeServer":
        if port is not None and port != self.port:
            self._listener.close()
            self._listener = socket.socket()
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", port))
            self.port = port
        self._listener.listen(8)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            self._listener.close()
        except OSError:
            pass
        self.close_clients()
        for t in self._threads:
            t.join(timeout=2)

    def close_clients(self) -> None:
        with self.lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self.lock:
                self._clients.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        pending: list[tuple[float, int]] = []  # (due, packet id) of PUBACKs to send
        send_lock = threading.Lock()
        alive = [True]

        def send(data: bytes) -> None:
            with send_lock:
                try:
                    conn.sendall(data)
                except OSError:
                    alive[0] = False

        def acker():
            while alive[0] and not self._stopping:
                time.sleep(0.005)
                now = time.monotonic()
                with self.lock:
                    due = [p for p in pending if p[0] <= now]
                    for p in due:
                        pending.remove(p)
                for _, pid in due:
                    send(bytes([0x40, 2]) + struct.pack("!H", pid))
        if self.ack:
            threading.Thread(target=acker, daemon=True).start()
        conn.settimeout(0.2)
        try:
            while alive[0] and not self._stopping:
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while True:
                    if len(buf) < 2:
                        break
                    try:
                        length, start = _read_varint(buf, 1)
                    except IndexError:
                        break
                    if len(buf) < start + length:
                        break
                    header, body, buf = buf[0], buf[start:start + length], buf[start + length:]
                    kind = header >> 4
                    if kind == 1:  # CONNECT
                        with self.lock:
                            self.connections.append(time.monotonic())
                        props = bytes([0x21]) + struct.pack("!H", self.receive_maximum)
                        body_out = bytes([0, 0]) + _varint(len(props)) + props
                        send(bytes([0x20]) + _varint(len(body_out)) + body_out)
                        if self.drop_after_connack:
                            time.sleep(0.05)
                            return
                    elif kind == 3:  # PUBLISH
                        qos = (header >> 1) & 3
                        tlen = struct.unpack("!H", body[:2])[0]
                        topic = body[2:2 + tlen].decode()
                        i = 2 + tlen
                        pid = None
                        if qos:
                            pid = struct.unpack("!H", body[i:i + 2])[0]
                            i += 2
                        plen, i = _read_varint(body, i)
                        payload = body[i + plen:]
                        with self.lock:
                            self.published.append((topic, payload, qos))
                            if qos:
                                pending.append((time.monotonic() + self.ack_delay if self.ack else float("inf"), pid))
                                in_flight = len(pending)
                                self.max_in_flight = max(self.max_in_flight, in_flight)
                                if in_flight > self.receive_maximum:
                                    self.violations += 1
                        if qos and in_flight > self.receive_maximum:
                            send(bytes([0xE0, 2, 0x93, 0]))  # DISCONNECT: Receive Maximum exceeded
                            return
                    elif kind == 8:  # SUBSCRIBE
                        pid = body[:2]
                        plen, i = _read_varint(body, 2)
                        i += plen
                        codes = bytearray()
                        while i < len(body):
                            flen = struct.unpack("!H", body[i:i + 2])[0]
                            i += 2 + flen + 1
                            codes.append(1)
                        out = pid + b"\0" + bytes(codes)
                        send(bytes([0x90]) + _varint(len(out)) + out)
                    elif kind == 10:  # UNSUBSCRIBE
                        pid = body[:2]
                        plen, i = _read_varint(body, 2)
                        i += plen
                        n = 0
                        while i < len(body):
                            flen = struct.unpack("!H", body[i:i + 2])[0]
                            i += 2 + flen
                            n += 1
                        out = pid + b"\0" + bytes(n)
                        send(bytes([0xB0]) + _varint(len(out)) + out)
                    elif kind == 12:  # PINGREQ
                        with self.lock:
                            self.pings += 1
                        send(bytes([0xD0, 0]))
                    elif kind == 14:  # DISCONNECT
                        return
        finally:
            alive[0] = False
            try:
                conn.close()
            except OSError:
                pass
