"""The command dispatcher: every request gets a reply, nothing bad gets through."""

import json

from hypothesis import given, settings, strategies as st

from hall_agent.commands import MAX_COMMAND_BYTES, CommandError, Dispatcher


def dispatcher(allow=False):
    d = Dispatcher()
    d.register("ping", lambda a: {"pong": True})
    d.register("power", lambda a: {"on": a["on"]}, allowed=lambda: allow)

    def needs_kind(args):
        if args.get("kind") not in ("opening", "closing"):
            raise CommandError("bad-args", "kind must be 'opening' or 'closing'")
        return {"kind": args["kind"]}
    d.register("check", needs_kind)
    d.register("boom", lambda a: 1 / 0)
    return d


def test_ping_reply_and_audit():
    out = dispatcher().handle(b'{"id":"r1","command":"ping"}')
    assert out.reply == {"id": "r1", "ok": True, "result": {"pong": True}}
    assert out.audit == {"id": "r1", "command": "ping", "args": {}, "ok": True, "error": None}


def error_code(payload: bytes, d=None):
    out = (d or dispatcher()).handle(payload)
    assert out.reply["ok"] is False and out.audit["ok"] is False
    return out.reply["id"], out.reply["error"]["code"]


def test_each_kind_of_bad_command_gets_its_code():
    assert error_code(b"x" * (MAX_COMMAND_BYTES + 1)) == (None, "too-large")
    assert error_code(b"\xff\xfe") == (None, "malformed")
    assert error_code(b"{not json") == (None, "malformed")
    assert error_code(b"[1,2]") == (None, "malformed")
    assert error_code(b'{"command":"ping"}') == (None, "malformed")
    assert error_code(b'{"id":"r","command":7}') == ("r", "malformed")
    assert error_code(b'{"id":"r","command":"ping","args":[1]}') == ("r", "malformed")
    assert error_code(b'{"id":"r","command":"ping","extra":1}') == ("r", "malformed")
    assert error_code(b'{"id":"r","command":"fly"}') == ("r", "unknown-command")
    assert error_code(b'{"id":"r","command":"power","args":{"equipment":"k","on":true}}') == ("r", "refused")
    assert error_code(b'{"id":"r","command":"check","args":{"kind":"lunch"}}') == ("r", "bad-args")
    assert error_code(b'{"id":"r","command":"boom"}') == ("r", "failed")
    assert error_code(b"[" * 100_000) == (None, "too-large")
    assert error_code(b"[" * 60_000) == (None, "malformed")  # deep nesting: RecursionError handled


def test_allowed_command_runs_when_enabled():
    out = dispatcher(allow=True).handle(b'{"id":"r","command":"power","args":{"equipment":"k","on":true}}')
    assert out.reply == {"id": "r", "ok": True, "result": {"on": True}}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["id", "command", "args", "x"]), json_values, max_size=4)
                 .map(lambda v: json.dumps(v).encode())))
def test_property_any_payload_gets_a_well_formed_reply(payload):
    out = dispatcher().handle(payload)
    reply = out.reply
    assert set(reply) in ({"id", "ok", "result"}, {"id", "ok", "error"})
    json.dumps(reply)  # always serialisable
    if not reply["ok"]:
        assert reply["error"]["code"] in {"too-large", "malformed", "unknown-command", "refused", "bad-args", "failed"}
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
