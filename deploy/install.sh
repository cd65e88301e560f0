#!/usr/bin/env bash
# Install (or update) hall-agent on Raspberry Pi OS Bookworm or Debian 12.
#
#   sudo deploy/install.sh              install or update, enable and start the service
#   sudo deploy/install.sh --uninstall  remove the program and the unit; keep config and state
#   deploy/install.sh --root DIR        install into a staging root (tests, image builds):
#                                       no packages, users, raspi-config or systemctl
#
# Idempotent: run it again to update. It never overwrites /etc/hall-agent/config.toml
# or the password file. HALL_AGENT_PIP_ARGS adds pip options (e.g. a local wheel index).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$(realpath -m "$2"); shift 2 ;;
    --root=*) ROOT=$(realpath -m "${1#--root=}"); shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

PREFIX="$ROOT/opt/hall-agent"
ETC="$ROOT/etc/hall-agent"
UNIT="$ROOT/etc/systemd/system/hall-agent.service"
USER_NAME=hall-agent
live() { [ -z "$ROOT" ]; }
say() { echo "install.sh: $*"; }

if live && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or use --root DIR for a staging install" >&2
  exit 2
fi

if [ "$UNINSTALL" -eq 1 ]; then
  if live; then
    systemctl disable --now hall-agent.service 2>/dev/null || true
  fi
  rm -f "$UNIT"
  rm -rf "$PREFIX"
  live && systemctl daemon-reload
  say "removed the program and the unit; kept $ETC and $ROOT/var/lib/hall-agent (remove them by hand to forget this hall)"
  exit 0
fi

# 1. packages, the user and its groups, the buses (live installs only)
if live; then
  need=()
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  # Raspberry Pi OS: the lgpio pin factory comes from Debian (seen through --system-site-packages)
  if ! dpkg -s python3-lgpio >/dev/null 2>&1 && apt-cache show python3-lgpio >/dev/null 2>&1; then
    need+=(python3-lgpio)
  fi
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || true
  fi
  for g in gpio i2c dialout; do getent group "$g" >/dev/null || groupadd --system "$g"; done
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/hall-agent --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    say "created user $USER_NAME"
  fi
  usermod -aG gpio,i2c,dialout "$USER_NAME"
  if command -v raspi-config >/dev/null 2>&1; then
    raspi-config nonint do_i2c 0          # enable I2C
    raspi-config nonint do_serial_hw 0    # enable the UART ...
    raspi-config nonint do_serial_cons 1  # ... without a login console on it
    say "enabled I2C and the serial port (a reboot may be needed the first time)"
  fi
fi

# 2. the program: a virtualenv in /opt/hall-agent (system site packages for python3-lgpio)
mkdir -p "$(dirname "$PREFIX")"
if [ ! -x "$PREFIX/bin/python" ]; then
  python3 -m venv --system-site-packages "$PREFIX"
fi
# shellcheck disable=SC2086
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check ${HALL_AGENT_PIP_ARGS:-} "$SRC"
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"
say "installed hall-agent $("$PREFIX/bin/hall-agent" --version | cut -d' ' -f2) in $PREFIX"

# 3. configuration: never overwrite; secrets readable by the service user only
install -d -m 0750 "$ETC"
if [ ! -e "$ETC/config.toml" ]; then
  install -m 0640 "$SRC/deploy/config.example.toml" "$ETC/config.toml"
  say "wrote $ETC/config.toml from the example: edit it for this hall"
else
  say "kept the existing $ETC/config.toml"
fi
if [ ! -e "$ETC/mqtt-password" ]; then
  install -m 0600 /dev/null "$ETC/mqtt-password"
  say "created an empty $ETC/mqtt-password (mode 0600): put the hall's broker password in it"
fi
chmod 0600 "$ETC/mqtt-password"
if live; then
  chown root:"$USER_NAME" "$ETC" "$ETC/config.toml"
  chown "$USER_NAME":"$USER_NAME" "$ETC/mqtt-password"
fi

# 4. the unit
install -d -m 0755 "$(dirname "$UNIT")"
install -m 0644 "$SRC/systemd/hall-agent.service" "$UNIT"
if live; then
  systemctl daemon-reload
  systemctl enable hall-agent.service >/dev/null
  if "$PREFIX/bin/hall-agent" config check -c "$ETC/config.toml" >/dev/null 2>&1; then
    systemctl restart hall-agent.service
    say "hall-agent enabled and (re)started; see: journalctl -u hall-agent -f; hall-agent doctor"
  else
    say "hall-agent enabled but not started: fix the configuration first:"
    "$PREFIX/bin/hall-agent" config check -c "$ETC/config.toml" || true
  fi
else
  say "staging install in $ROOT done (no users, packages or services touched)"
fi
