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


# -- what the JSON grammar lets through but nothing downstream can carry ---------------------------

import math  # noqa: E402

from hall_agent.envelope import Envelope, encode_json  # noqa: E402


def test_lone_surrogate_gets_an_error_reply_that_can_be_sent():
    for payload in (b'{"id":"s1","command":"ping","args":{"x":"\\ud800"}}',
                    b'{"id":"s1","command":"ping","args":{"\\udfff":1}}',
                    b'{"id":"s1","command":"p\\ud800ng"}'):
        out = dispatcher().handle(payload)
        assert out.reply["ok"] is False and out.reply["error"]["code"] == "malformed"
        assert out.reply["id"] == "s1" and "surrogate" in out.reply["error"]["message"]
        encode_json(out.reply).decode("utf-8")  # the reply and the audit are valid UTF-8
        encode_json(out.audit).decode("utf-8")
    out = dispatcher().handle(b'{"id":"\\ud800","command":"ping"}')
    assert out.reply["ok"] is False and out.reply["id"] is None
    encode_json(out.reply).decode("utf-8")


def test_an_integer_of_more_than_4300_digits_gets_an_error_reply():
    out = dispatcher().handle(b'{"id":"big","command":"ping","args":{"n":' + b"9" * 5000 + b"}}")
    assert out.reply["ok"] is False and out.reply["error"]["code"] == "malformed"
    out = dispatcher().handle(b'{"id":"big","command":"ping","args":{"n":' + b"9" * 4000 + b"}}")
    assert out.reply["ok"] is True  # big, but an integer Python reads


def test_nan_and_infinity_are_not_json():
    for word in (b"NaN", b"Infinity", b"-Infinity"):
        out = dispatcher().handle(b'{"id":"n","command":"ping","args":{"v":' + word + b"}}")
        assert out.reply["ok"] is False and out.reply["error"]["code"] == "malformed"
        assert word.decode().lstrip("-") in out.reply["error"]["message"]


def strict_loads(data: bytes):
    def refuse(name):
        raise ValueError(f"{name} in output")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def test_envelopes_and_replies_are_strict_json_whatever_they_hold():
    env = Envelope("reading", "s", {"values": {"co2_ppm": math.nan, "t": math.inf, "ok": 1.5},
                                    "note": "bad \udc80 byte"}, "2026-12-01T08:00:00+08:00", "zg-001")
    doc = strict_loads(env.encode(7))
    assert doc["data"]["values"] == {"co2_ppm": None, "t": None, "ok": 1.5}
    assert doc["data"]["note"] == "bad ? byte" and doc["seq"] == 7
    assert strict_loads(encode_json({"id": "x", "result": {"v": -math.inf}})) == {"id": "x", "result": {"v": None}}


@settings(max_examples=300, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=4), max_leaves=20))
def test_any_data_encodes_to_strict_json(value):
    strict_loads(encode_json({"data": value}))


@settings(max_examples=300, deadline=None)
@given(args=st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=4), max_leaves=20))
def test_any_command_gets_a_reply_that_can_be_sent(args):
    payload = json.dumps({"id": "h", "command": "ping", "args": {"a": args}}).encode()  # NaN as NaN, \\ud800 escaped
    out = dispatcher().handle(payload)
    strict_loads(encode_json(out.reply))
    strict_loads(encode_json(out.audit))


def test_a_number_too_large_for_a_float_is_refused_not_read_as_infinity():
    """1e309 is valid JSON but Python reads it as inf: it reached a handler (and any reply or
    audit that echoed it) as Infinity, which no strict JSON parser accepts."""
    for number in (b"1e309", b"-1e400", b"1" + b"0" * 400 + b".5"):
        out = dispatcher().handle(b'{"id":"f","command":"ping","args":{"v":' + number + b"}}")
        assert out.reply["ok"] is False and out.reply["error"]["code"] == "malformed", number
        assert out.reply["id"] is None or out.reply["id"] == "f"
    assert dispatcher().handle(b'{"id":"f","command":"ping","args":{"v":1e308}}').reply["ok"] is True
