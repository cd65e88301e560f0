"""``hall-agent fleet push`` and ``fleet status`` over 20 simulated halls (the
agent's own fleet code per hall) through mosquitto with deploy/'s per-hall ACL:
waves, one invalid file, one hall that reverts, the stop after --max-failures."""

import json
from pathlib import Path

import pytest

from fleet_helpers import AclBroker, Central, SimHall
from hall_agent.cli import main
from hall_agent.fleet import push as fp

pytestmark = pytest.mark.timeout(240)

HALLS = [("zigong", "gongjing", f"gj-{i:03d}") for i in range(1, 11)] + \
        [("zigong", "ziliujing", f"zg-{i:03d}") for i in range(1, 11)]


def centre_text(hall: SimHall) -> str:
    lines = [line for line in hall.config.read_text().splitlines()
             if not line.startswith(("password_file", "revert_after_s", "[fleet]"))]
    return "\n".join(lines).replace('monday = "closed"', 'monday = "09:00-17:00"') + "\n"


@pytest.fixture
def fleet(tmp_path):
    broker = AclBroker(tmp_path / "mq", HALLS).start()
    halls = {}
    try:
        for city, branch, hall in HALLS:
            halls[hall] = SimHall(tmp_path / "halls" / hall, broker.port, broker.secrets[hall], city, branch, hall,
                                  revert_after_s=3)
        central = Central(broker.port, broker.secrets["central"])
        assert central.wait_for(lambda: len({t for t, p, _ in central.messages if t.endswith("/status")
                                             and json.loads(p)["state"] == "online"}) == 20, 30)
        pw = tmp_path / "central-password"
        pw.write_text(broker.secrets["central"] + "\n")
        cfg = tmp_path / "central.toml"
        cfg.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "central"\n'
                       f'password_file = "{pw}"\n')
        folder = tmp_path / "desired"
        for city, branch, hall in HALLS:
            text = centre_text(halls[hall])
            if hall == "gj-001":
                text += "\n[agent]\nhealth_interval_s = 7\n"   # applied by a restart
            if hall == "gj-003":
                text += '\n[[sensors]]\nid = "env"\ndriver = "sht3x"\naddress = 0x99\n'   # invalid
            if hall == "gj-008":
                text = text.replace('host = "127.0.0.1"', 'host = "127.0.0.2"')   # cannot reach the broker
            path = folder / city / branch / f"{hall}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        yield broker, halls, central, cfg, folder
    finally:
        for h in halls.values():
            h.close()
        broker.stop()


def test_push_in_waves_stops_after_max_failures_then_status_shows_each_hall(fleet, capsys):
    broker, halls, central, cfg, folder = fleet
    code = main(["fleet", "push", str(folder), "--scope", "zigong", "--wave", "5", "--max-failures", "2",
                 "--timeout", "60", "--version", "v7", "-c", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert len(rows) == 20
    result = {hall.split("/")[-1]: row[2] for hall, row in rows.items()}
    wave = {hall.split("/")[-1]: int(row[1]) for hall, row in rows.items()}
    assert wave["gj-001"] == 1 and wave["gj-006"] == 2 and wave["zg-001"] == 3 and wave["zg-010"] == 4
    assert result["gj-003"] == "rejected" and result["gj-008"] == "reverted"
    assert [h for h, r in result.items() if r == "applied"] == [
        f"gj-{i:03d}" for i in (1, 2, 4, 5, 6, 7, 9, 10)]
    assert all(result[f"zg-{i:03d}"] == "not-pushed" for i in range(1, 11))  # waves 3 and 4 never started
    assert "sensors[0].address: 0x99 is not a 7-bit I2C address" in rows["zigong/gongjing/gj-003"][-1] or \
        "sensors[0].address" in out
    assert "no connection to the broker within 3 s" in out
    assert "stopped after 2 failure(s)" in err and "(wave 2/4)" in err and "(wave 3/4)" not in err
    assert "[" in err and "applied 8" in err
    assert halls["gj-001"].restarts == 1 and halls["gj-008"].restarts == 2
    assert halls["gj-003"].restarts == 0 and halls["gj-002"].restarts == 0
    # the halls not pushed got no desired message at all
    assert not [t for t, p, _ in central.messages if t.endswith("/config/desired") and "/ziliujing/" in t]
    assert halls["gj-008"].config.read_text().count('host = "127.0.0.1"') == 1  # reverted to its own file

    code = main(["fleet", "status", "--scope", "zigong", "--json", "-c", str(cfg)])
    items = {i["hall"].split("/")[-1]: i for i in json.loads(capsys.readouterr().out)}
    assert code == 0 and len(items) == 20 and all(i["online"] for i in items.values())
    assert items["gj-002"]["state"] == "applied" and items["gj-002"]["config_version"] == "v7"
    assert items["gj-002"]["config_sha256"] == fp.dz.sha256_text((folder / "zigong/gongjing/gj-002.toml").read_text())
    assert items["gj-003"]["state"] == "rejected" and items["gj-003"]["errors"]
    assert items["gj-008"]["state"] == "reverted"
    assert items["zg-001"]["state"] is None and items["zg-001"]["config_version"] is None

    # the rest, in halves: every hall applies it
    code = main(["fleet", "push", str(folder), "--scope", "zigong/ziliujing", "--wave", "50%", "--max-failures",
                 "1", "--timeout", "60", "--version", "v7", "-c", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert [line.split()[2] for line in out.splitlines()[2:]] == ["applied"] * 10
    assert [line.split()[1] for line in out.splitlines()[2:]] == ["1"] * 5 + ["2"] * 5
    main(["fleet", "status", "--scope", "zigong/ziliujing", "-c", str(cfg)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["hall", "status", "agent", "config", "sha256", "state", "detail"]
    assert len(table) == 12 and all(line.split()[1] == "online" and line.split()[5] == "applied"
                                    for line in table[2:])


def test_usage_errors(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nhost = "127.0.0.1"\nport = 1\n')
    assert main(["fleet", "push", str(tmp_path / "none"), "--scope", "zigong", "-c", str(cfg)]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "d" / "zigong" / "b").mkdir(parents=True)
    (tmp_path / "d" / "zigong" / "b" / "h.toml").write_text("")
    assert main(["fleet", "push", str(tmp_path / "d"), "--scope", "zigong", "--wave", "0", "-c", str(cfg)]) == 2
    assert "--wave '0'" in capsys.readouterr().err
    assert main(["fleet", "push", str(tmp_path / "d"), "--scope", "a/+", "-c", str(cfg)]) == 2
    assert main(["fleet", "status", "--scope", "zigong", "-c", str(cfg)]) == 2
    assert "broker 127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.parametrize("spec, total, size", [("5", 20, 5), ("10%", 20, 2), ("10%", 5, 1), ("100%", 7, 7),
                                               ("33%", 10, 4)])
def test_wave_sizes(spec, total, size):
    assert fp.wave_size(spec, total) == size


def test_a_timeout_is_judged_on_the_injected_clock():
    f = fp.HallFile(("c", "b", "h"), Path("x"), "t")
    r = fp.Rollout.plan([f], 1, None, 10, "v1")
    run = r.runs[0]
    run.result, run.started = "waiting", 100.0
    r.observe(run, 109.0)
    assert run.result == "waiting"
    run.reported = {"sha256": run.sha256, "version": "v1", "state": "applied"}
    run.online = False
    r.observe(run, 109.5)
    assert run.result == "waiting"  # applied but not online: not yet
    r.observe(run, 110.5)
    assert run.result == "timeout" and "last: applied" in run.detail and "offline" in run.detail
