"""The ``hall-agent`` command line (SPEC section 8).

Exit codes: 0 ok; 1 a check failed or a problem was found; 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .config import ConfigError, config_path, load, masked

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hall-agent", description="Customer-service hall agent (MQTT).")
    p.add_argument("--version", action="version", version=f"hall-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cfg(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", metavar="FILE",
                        help="configuration file (default: $HALL_AGENT_CONFIG or /etc/hall-agent/config.toml)")
        return sp

    run = cfg(sub.add_parser("run", help="run the agent"))
    run.add_argument("--simulate", action="store_true", help="emulated hardware (SPEC section 9)")

    check = cfg(sub.add_parser("check", help="run the opening or closing check now"))
    check.add_argument("kind", choices=["opening", "closing"])
    check.add_argument("--simulate", action="store_true")
    check.add_argument("--json", action="store_true")
    check.add_argument("--no-publish", action="store_true")

    config = sub.add_parser("config", help="check or show the configuration")
    config_sub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    cfg(config_sub.add_parser("check", help="validate the file; one line per problem"))
    cfg(config_sub.add_parser("show", help="print the effective settings, secrets masked"))

    schedule = cfg(sub.add_parser("schedule", help="the coming opening/closing runs"))
    schedule.add_argument("--from", dest="from_date", metavar="DATE")
    schedule.add_argument("--days", type=int, default=14)
    schedule.add_argument("--json", action="store_true")

    cfg(sub.add_parser("doctor", help="check buses, ports, pins, permissions and the broker"))
    watch = cfg(sub.add_parser("watch", help="live alert console for staff"))
    watch.add_argument("--scope", metavar="CITY[/BRANCH[/HALL]]", help="'+' stands for any one level")
    watch.add_argument("--once", action="store_true",
                       help="draw the board once and exit (1 if the broker could not be read)")
    watch.add_argument("--no-bell", action="store_true", help="no terminal bell on a new critical alert")
    watch.add_argument("--operator", metavar="ID", help="your staff id: the a key acknowledges the first "
                                                        "unacknowledged alert as ID")
    watch.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # bounded run, for tests

    fleet = sub.add_parser("fleet", help="roll configurations out to halls; their state (docs/fleet.md)")
    fleet_sub = fleet.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = cfg(fleet_sub.add_parser("push", help="publish each hall's desired file, wave by wave"))
    push.add_argument("dir", metavar="DIR", help="folder of <city>/<branch>/<hall>.toml files")
    push.add_argument("--scope", required=True, metavar="CITY[/BRANCH[/HALL]]")
    push.add_argument("--wave", default="10%", metavar="N|N%", help="halls per wave (default 10%%)")
    push.add_argument("--max-failures", type=int, metavar="K", help="start no further wave after K failures")
    push.add_argument("--timeout", type=float, default=600.0, metavar="S",
                      help="seconds a hall has to report applied and online (default 600)")
    push.add_argument("--version", dest="config_version", metavar="V", help="version label (default: UTC time)")
    fstatus = cfg(fleet_sub.add_parser("status", help="each hall's configuration version, sha256 and state"))
    fstatus.add_argument("--scope", required=True, metavar="CITY[/BRANCH[/HALL]]")
    fstatus.add_argument("--json", action="store_true")
    return p


def _load(args: argparse.Namespace, defaults: dict | None = None):
    try:
        return load(args.config, defaults)
    except ConfigError as e:
        for line in e.problems:
            print(f"config error: {line}", file=sys.stderr)
        return None


def _state_writable(settings, simulate: bool) -> bool:
    """The state folder can be written, or one clear line says why not."""
    from .agent import storage_dir
    state = storage_dir(settings, simulate)
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError as e:
        import errno
        import os
        if e.errno == errno.EROFS and os.environ.get("INVOCATION_ID"):  # under systemd: the unit's sandbox
            print(f"config error: storage.dir: {state} is read-only to hall-agent.service (only "
                  "/var/lib/hall-agent and the folders its drop-ins grant are writable): run deploy/install.sh "
                  "again, which adds storage.dir to the unit, or remove storage.dir", file=sys.stderr)
            return False
        print(f"config error: storage.dir: {state}: {e.strerror or e} (run as the service user, "
              "set storage.dir, or use --simulate)", file=sys.stderr)
        return False


def _schedule(args: argparse.Namespace) -> int:
    from datetime import date, datetime, time
    from .calendar import BusinessCalendar
    settings = _load(args)
    if settings is None:
        return EXIT_USAGE
    cal = BusinessCalendar(settings.hours, settings.hall.timezone, settings.checks.opening_lead_min,
                           settings.checks.closing_delay_min)
    if args.from_date:
        try:
            start = datetime.combine(date.fromisoformat(args.from_date), time(0), tzinfo=cal.tz)
        except ValueError:
            print(f"schedule: --from {args.from_date!r} is not a date such as 2026-12-01", file=sys.stderr)
            return EXIT_USAGE
    else:
        start = datetime.now(cal.tz)
    if args.days < 1:
        print("schedule: --days must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    runs = cal.runs(start, args.days)
    first = cal.unconfirmed_from(datetime.now(cal.tz).date())
    unconfirmed = [first is not None and r.day >= first for r in runs]
    if args.json:  # a run on a day the official holiday schedule does not cover carries "unconfirmed": true
        print(json.dumps([{**r.as_dict(), **({"unconfirmed": True} if u else {})} for r, u in zip(runs, unconfirmed)]))
        return EXIT_OK
    for r, u in zip(runs, unconfirmed):
        mark = "; UNCONFIRMED: holidays guessed" if u else ""
        print(f"{r.at:%Y-%m-%d %a %H:%M %z}  {r.kind:8}  ({cal.why(r.day)}{mark})")
    if not runs:
        print(f"no opening or closing in the {args.days} day(s) from {start:%Y-%m-%d}")
    if any(unconfirmed):
        print(f"\nfrom {first.isoformat()} the official holiday schedule is not known (days off and make-up days "
              "are the holidays package's guess): upgrade it (pip install -U holidays) once it has that year, "
              "or list that year's days off under [hours] closed and its make-up days under [hours.open]")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "schedule":
        return _schedule(args)
    # a console's configuration needs only [mqtt]
    defaults = {"hall": {"id": "console", "city": "central", "branch": "central"}} \
        if args.command in ("watch", "fleet") else None
    settings = _load(args, defaults)
    if settings is None:
        return EXIT_USAGE
    from .config.checks import warnings as config_warnings
    if args.command in ("config", "run", "check", "doctor"):
        for path, reason in config_warnings(settings):
            print(f"config warning: {path}: {reason}", file=sys.stderr)
    if args.command == "config":
        if args.action == "check":
            print(f"{config_path(args.config)}: ok (hall {settings.hall.id}, {len(settings.sensors)} sensors, "
                  f"{len(settings.inputs)} inputs, {len(settings.printers)} printers, "
                  f"{len(settings.equipment)} equipment)")
        else:
            print(json.dumps(masked(settings), indent=2, ensure_ascii=False))
        return EXIT_OK
    if args.command in ("run", "check") and not _state_writable(settings, args.simulate):
        return EXIT_USAGE
    if args.command == "run":
        from . import logs
        from .agent import Agent
        from .agent import storage_dir
        from .oneshot import take_lock
        from .outbox import OutboxUnavailable
        logs.setup(settings.agent.log_level)
        state = storage_dir(settings, args.simulate)
        lock = take_lock(state)  # before the outbox is opened: one process numbers its envelopes
        if lock is None:
            print(f"another hall-agent already runs with the state folder {state}", file=sys.stderr)
            return EXIT_USAGE
        try:
            agent = Agent(settings, simulate=args.simulate, config_path=args.config)
        except OutboxUnavailable as e:
            print(f"storage error: {e}", file=sys.stderr)
            return EXIT_USAGE
        agent.lock_file = lock
        return agent.run()
    if args.command == "watch":
        from . import watch
        return watch.run(settings, args.scope, seconds=args.seconds, once=args.once, bell=not args.no_bell,
                         operator=args.operator)
    if args.command == "fleet":
        from .fleet import push as fleet
        if args.action == "push":
            return fleet.push(settings, args.dir, args.scope, args.wave, args.max_failures, args.timeout,
                              args.config_version)
        return fleet.status(settings, args.scope, args.json)
    if args.command == "doctor":
        from . import doctor
        return doctor.run(settings, args.config)
    if args.command == "check":
        from .oneshot import run_check
        return run_check(settings, args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
