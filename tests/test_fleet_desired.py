"""The desired configuration without a broker: the TOML writer, parsing,
the limits that protect the hall, the file replaced with the previous kept."""

import json
import os
import tomllib

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from hall_agent.fleet import desired as dz, files, tomlw
from hall_agent.fleet.live import changes

LOCAL = """
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"

[mqtt]
host = "127.0.0.1"
username = "zg-001"
password_file = "PWFILE"

[commands]
allow_reset = true

[fleet]
revert_after_s = 60
"""

DESIRED = """
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"

[mqtt]
host = "127.0.0.1"
username = "zg-001"

[hours]
monday = "09:00-18:00"
"""


def msg(text, version="v2"):
    return dz.payload(version, text)


# -- the writer ----------------------------------------------------------------------
keys = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True) | st.text(min_size=1, max_size=6)
scalars = (st.text(max_size=20) | st.integers(-2**62, 2**62) | st.booleans()
           | st.floats(allow_nan=False) | st.dates())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
tables = st.recursive(
    st.dictionaries(keys, values, max_size=4),
    lambda inner: st.dictionaries(keys, inner | values | st.lists(inner, min_size=1, max_size=2), max_size=4),
    max_leaves=12)


@given(tables)
@hsettings(max_examples=200, deadline=None)
def test_the_writer_round_trips_through_tomllib(data):
    assert tomllib.loads(tomlw.dumps(data)) == data


def test_the_writer_round_trips_the_example_hall():
    from pathlib import Path
    data = tomllib.loads((Path(__file__).parent.parent / "deploy" / "config.example.toml").read_text())
    assert tomllib.loads(tomlw.dumps(data)) == data


# -- parsing -------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expect", [
    (b"\xff", "not UTF-8"),
    (b"{", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"version": "v1", "toml": "x"}', "config/desired.sha256: required"),
    (json.dumps({"version": "v1", "sha256": "00", "toml": "a = 1"}).encode(), "is not the sha256"),
    (json.dumps({"version": "v1", "sha256": dz.sha256_text("a"), "toml": "a", "x": 1}).encode(), "unknown fields: x"),
    (b"x" * (dz.MAX_DESIRED_BYTES + 1), "the limit is"),
])
def test_a_malformed_message_is_refused_with_a_reason(raw, expect):
    with pytest.raises(dz.Rejected) as e:
        dz.parse(raw)
    assert any(expect in line for line in e.value.errors), e.value.errors


def test_a_message_is_identified_by_version_and_sha256():
    d = dz.parse(msg(DESIRED))
    assert d.sha256 == dz.sha256_text(DESIRED) and d.key == f"v2@{d.sha256}"


# -- the limits ----------------------------------------------------------------------
@pytest.fixture
def password_file(tmp_path):
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    global PW
    PW = str(pw)
    return pw


PW = ""


def merge(text):
    return dz.merge(dz.parse(msg(text)), tomllib.loads(LOCAL.replace("PWFILE", PW)))


def test_an_accepted_file_keeps_the_halls_local_keys(password_file):
    merged, settings = merge(DESIRED)
    assert merged["mqtt"]["password_file"] == str(password_file)
    assert merged["commands"] == {"allow_reset": True} and merged["fleet"] == {"revert_after_s": 60}
    assert settings.hours.monday == "09:00-18:00" and settings.commands.allow_reset is True
    assert settings.fleet.revert_after_s == 60


def test_secrets_commands_and_fleet_are_refused_with_their_key_paths_all_at_once(password_file):
    text = DESIRED.replace('username = "zg-001"', 'username = "zg-001"\npassword = "hunter2"\n'
                                                  'key_file = "/tmp/other.key"') + """
[commands]
allow_reset = true
allow_power = true

[fleet]
revert_after_s = 5
"""
    with pytest.raises(dz.Rejected) as e:
        merge(text)
    paths = [line.split(":")[0] for line in e.value.errors]
    assert paths == ["mqtt.password", "mqtt.key_file", "commands.allow_power", "fleet.revert_after_s"]
    assert "hunter2" not in " ".join(e.value.errors)


def test_the_local_sections_written_the_same_are_no_change(password_file):
    text = DESIRED + '\n[commands]\nallow_reset = true\nallow_power = false\n\n[fleet]\nrevert_after_s = 60\n'
    merged, _ = merge(text)
    assert merged["commands"] == {"allow_reset": True}


def test_the_hall_may_not_be_moved_off_its_base_topic(password_file):
    with pytest.raises(dz.Rejected) as e:
        merge(DESIRED.replace('id = "zg-001"', 'id = "zg-999"', 1).replace(
            'username = "zg-001"', 'username = "zg-001"\ntopic_root = "other"'))
    assert [line.split(":")[0] for line in e.value.errors] == ["hall.id", "mqtt.topic_root"]


def test_an_invalid_file_gets_the_same_key_path_messages_as_config_check(password_file):
    text = DESIRED + '\n[[sensors]]\nid = "env"\ndriver = "sht3x"\naddress = 0x99\n\n[hours]\n'
    with pytest.raises(dz.Rejected) as e:
        merge(text)
    assert any("TOML syntax error" in line for line in e.value.errors)
    text = DESIRED.replace('"09:00-18:00"', '"18:00-09:00"') + \
        '\n[[sensors]]\nid = "env"\ndriver = "sht3x"\naddress = 0x99\n'
    with pytest.raises(dz.Rejected) as e:
        merge(text)
    assert e.value.errors == ["hours.monday: '18:00-09:00' closes before it opens",
                              "sensors[0].address: 0x99 is not a 7-bit I2C address (0x08-0x77)"]


def test_changes_name_the_sections_that_differ(password_file):
    _, a = merge(DESIRED)
    _, b = merge(DESIRED.replace("09:00-18:00", "10:00-18:00").replace('host = "127.0.0.1"', 'host = "localhost"'))
    assert changes(a, b) == ["mqtt", "hours"]
    assert changes(a, a) == []


# -- the file on disk ----------------------------------------------------------------
def test_the_file_is_replaced_with_the_previous_kept_and_can_be_put_back(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("a = 1\n")
    os.chmod(cfg, 0o640)
    files.replace_keeping_previous(cfg, b"a = 2\n")
    assert cfg.read_text() == "a = 2\n" and files.prev_path(cfg).read_text() == "a = 1\n"
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert files.restore_previous(cfg)
    assert cfg.read_text() == "a = 1\n" and files.failed_path(cfg).read_text() == "a = 2\n"
    assert not files.prev_path(cfg).exists()
    assert files.restore_previous(cfg) is False


def test_the_member_exposes_its_retained_report_and_refuses_without_touching_the_file(tmp_path, password_file):
    from hall_agent.config import load
    from hall_agent.fleet import Member
    cfg = tmp_path / "config.toml"
    cfg.write_text(LOCAL.replace("PWFILE", PW))
    sent = []
    m = Member(load(cfg), cfg, tmp_path, lambda p, w: sent.append(p) or True, lambda r: None, lambda: "t")
    assert m.retained() == []
    before = cfg.read_bytes()
    m.on_desired(msg(DESIRED.replace('id = "zg-001"', 'id = "zg-002"')))
    assert cfg.read_bytes() == before and json.loads(sent[-1])["state"] == "rejected"
    assert m.retained() == [("config/reported", sent[-1])]
    again = Member(load(cfg), cfg, tmp_path, lambda p, w: True, lambda r: None, lambda: "t")
    [(topic, payload)] = again.retained()  # kept across a restart (fleet.json)
    assert topic == "config/reported" and json.loads(payload) == json.loads(sent[-1])
    n = len(sent)
    m.on_desired(msg(DESIRED.replace('id = "zg-001"', 'id = "zg-002"')))  # the same push again: not redone
    assert len(sent) == n


def test_the_state_folder_stays_local(password_file):
    local = LOCAL.replace("PWFILE", PW) + '\n[storage]\ndir = "/var/lib/hall-agent"\n'
    merged, settings = dz.merge(dz.parse(msg(DESIRED)), tomllib.loads(local))
    assert merged["storage"] == {"dir": "/var/lib/hall-agent"}
    with pytest.raises(dz.Rejected) as e:
        dz.merge(dz.parse(msg(DESIRED + '\n[storage]\ndir = "/tmp/elsewhere"\n')), tomllib.loads(local))
    assert [line.split(":")[0] for line in e.value.errors] == ["storage.dir"]
    merged, _ = dz.merge(dz.parse(msg(DESIRED + '\n[storage]\nmax_outbox_mb = 64\n')), tomllib.loads(local))
    assert merged["storage"] == {"max_outbox_mb": 64, "dir": "/var/lib/hall-agent"}


def test_a_file_that_cannot_be_written_is_rejected_and_nothing_changes(tmp_path, password_file, monkeypatch):
    import errno
    from hall_agent.config import load
    from hall_agent.fleet import Member
    cfg = tmp_path / "config.toml"
    cfg.write_text(LOCAL.replace("PWFILE", PW))
    sent, restarts = [], []
    m = Member(load(cfg), cfg, tmp_path, lambda p, w: sent.append(json.loads(p)) or True, restarts.append,
               lambda: "t")

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(files, "replace_keeping_previous", read_only)  # the unit's ProtectSystem=strict
    before = cfg.read_bytes()
    m.on_desired(msg(DESIRED))
    assert sent[-1]["state"] == "rejected" and restarts == []
    assert sent[-1]["errors"] == [f"{cfg}: cannot be written (Read-only file system); nothing changed"]
    assert cfg.read_bytes() == before


def test_a_process_that_is_restarting_never_confirms_its_own_restart(tmp_path, password_file):
    """The old process may still be connected while it stops: only the restarted one
    (with the new file) may report applied, or a file that cannot reach the broker
    would never be reverted."""
    from hall_agent.config import load
    from hall_agent.fleet import Member
    cfg = tmp_path / "config.toml"
    cfg.write_text(LOCAL.replace("PWFILE", PW))
    sent, restarts = [], []
    m = Member(load(cfg), cfg, tmp_path, lambda p, w: sent.append(json.loads(p)) or True, restarts.append,
               lambda: "t")
    m.on_desired(msg(DESIRED.replace('host = "127.0.0.1"', 'host = "127.0.0.2"')))
    assert restarts and [r["state"] for r in sent] == ["applying"]
    m.connected()   # the old connection is still up (or stop() woke the watcher)
    m._turn()
    m.stop()
    m._turn()
    assert [r["state"] for r in sent] == ["applying"]
    assert json.loads((tmp_path / "fleet.json").read_text())["pending"]["phase"] == "restart"
