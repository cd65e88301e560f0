"""``hall-agent check opening|closing``: run one check now and print it.

If the agent service is running on this machine (it holds the state
folder's lock), the check is asked of it over MQTT (the ``check`` command):
two processes must not drive the same pins and ports, nor number envelopes
from the same outbox. Otherwise the check runs here, with the real parts
(or the emulated ones with ``--simulate``); ``--no-publish`` keeps it off
MQTT altogether.
"""

from __future__ import annotations

import fcntl
import json
import sys
import threading
import time
import uuid
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _NoLock:
    def close(self) -> None:
        pass


def take_lock(state_dir: Path, create: bool = True):
    """The state folder's lock, held by whoever drives the parts and numbers envelopes
    from the outbox (the service, or this one-shot check while it runs); None if taken.
    ``create=False`` (a check that writes nothing there): a folder no agent ever used is
    left as it is (nothing to lock against)."""
    path = state_dir / "agent.lock"
    if not create and not path.exists():
        return _NoLock()
    state_dir.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def agent_running(state_dir: Path) -> bool:
    """Whether another process holds the state folder's lock (creates nothing)."""
    if not (state_dir / "agent.lock").exists():
        return False
    lock = take_lock(state_dir)
    if lock is None:
        return True
    lock.close()
    return False


def print_report(data: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(f"{data['check']} check: {data['result'].upper()}  ({data['started_at']} - {data['finished_at']})")
        for item in data["items"]:
            print(f"  {item['result']:4}  {item['id']:24} {item['detail']}")
    return EXIT_FAIL if data["result"] == "fail" else EXIT_OK


def run_check(settings, args) -> int:
    from .agent import Agent, storage_dir
    state_dir = storage_dir(settings, args.simulate)
    # held until the check is done: a service starting meanwhile waits (with --no-publish its outbox
    # and state are a scratch folder's, and a state folder no agent ever used is not made)
    lock = take_lock(state_dir, create=not args.no_publish)
    if lock is None:
        if args.simulate:  # its emulated parts are its own: a second process would share its client id and seq
            print(f"check: a simulated agent already runs with the state folder {state_dir}; ask it over MQTT:\n"
                  f"  mosquitto_pub -h {settings.mqtt.host} -p {settings.mqtt.effective_port} "
                  f"-t '{settings.base_topic}/cmd' -m "
                  f"'{{\"id\":\"1\",\"command\":\"check\",\"args\":{{\"kind\":\"{args.kind}\"}}}}'\n"
                  "or stop it first", file=sys.stderr)
            return EXIT_USAGE
        if args.no_publish:  # the service's check is always published (its report, check-failed)
            print(f"check --no-publish: the agent service runs with the state folder {state_dir} and drives the "
                  "parts; a check it runs is published (its report, check-failed). Run the check without "
                  "--no-publish (the service runs it), or stop the service first", file=sys.stderr)
            return EXIT_USAGE
        return remote_check(settings, args)
    try:
        return _check_here(settings, args, Agent)
    finally:
        lock.close()


def _check_here(settings, args, Agent) -> int:
    from .outbox import OutboxUnavailable
    scratch = None
    if args.no_publish:  # neither the service's outbox nor its state (alerts, done marks) is touched
        import tempfile
        scratch = tempfile.TemporaryDirectory(prefix="hall-agent-check-")
        settings = settings.model_copy(update={"storage": settings.storage.model_copy(
            update={"dir": Path(scratch.name)})})
    try:
        agent = Agent(settings, simulate=args.simulate)
    except OutboxUnavailable as e:
        print(f"storage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.no_publish:
        agent.alerts.load()  # the active alerts: a passing check clears check-failed
    agent.devices.start()
    agent.sensors.start()
    if not args.no_publish:
        agent.link.start()
    try:
        report = agent.run_check(args.kind, publish=not args.no_publish)
    finally:
        agent.sensors.stop()
        agent.devices.stop()
        if not args.no_publish:
            # a check without a settle wait takes milliseconds: give the link its drain time to connect
            # (what it cannot send stays in the outbox for the service's next start)
            deadline = time.monotonic() + settings.mqtt.drain_s
            while not agent.link.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            agent.link.stop(settings.mqtt.drain_s)
        agent.outbox.close()
        agent.hardware.close()
        if scratch is not None:
            scratch.cleanup()
    return print_report(report.as_dict(), args.json)


def remote_check(settings, args) -> int:
    from .link import make_client
    base = settings.base_topic
    cid = f"cli-{uuid.uuid4().hex[:8]}"
    reply: dict = {}
    got = threading.Event()
    client = make_client(settings, f"hall-agent-cli-{cid}")

    def on_connect(c, u, flags, rc, props):
        c.subscribe(f"{base}/cmd/reply", qos=1)

    def on_subscribe(c, u, mid, rc, props):
        c.publish(f"{base}/cmd", json.dumps({"id": cid, "command": "check", "args": {"kind": args.kind}}), qos=1)

    def on_message(c, u, msg):
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if doc.get("id") == cid:
            reply.update(doc)
            got.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(settings.mqtt.host, settings.mqtt.effective_port, 30)
    client.loop_start()
    try:
        if not got.wait(settings.checks.settle_s + 120):
            print("check: the running agent did not answer the check command", file=sys.stderr)
            return EXIT_FAIL
    finally:
        client.disconnect()
        client.loop_stop()
    if not reply.get("ok"):
        print(f"check: {reply.get('error', {}).get('message')}", file=sys.stderr)
        return EXIT_FAIL
    return print_report(reply["result"], args.json)
