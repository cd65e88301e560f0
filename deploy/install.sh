#!/usr/bin/env bash
# Install (or update) hall-agent on Raspberry Pi OS Bookworm or Debian 12.
#
#   sudo deploy/install.sh              install or update, enable and start the service
#   sudo deploy/install.sh --uninstall  remove the program and the unit; keep config and state
#   deploy/install.sh --root DIR        install into a staging root (tests, image builds):
#                                       no packages, users, raspi-config or systemctl
#
# Idempotent: run it again to update, or to repair a failed or partial install (it
# rebuilds a broken /opt/hall-agent). It never overwrites /etc/hall-agent/config.toml
# or the password file. Run it again after changing storage.dir (it gives the unit
# access to the folder).
# HALL_AGENT_PIP_ARGS adds pip options, e.g. an offline install from wheels built elsewhere:
#   HALL_AGENT_PIP_ARGS="--no-index --find-links /path/to/wheels" deploy/install.sh
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
DROPIN="$ROOT/etc/systemd/system/hall-agent.service.d"
MODULES="$ROOT/etc/modules-load.d/hall-agent.conf"
UDEV_RULES="$ROOT/etc/udev/rules.d/60-hall-agent.rules"
USER_NAME=hall-agent
live() { [ -z "$ROOT" ]; }
say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

if live && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or use --root DIR for a staging install" >&2
  exit 2
fi

if [ "$UNINSTALL" -eq 1 ]; then
  if live; then
    systemctl disable --now hall-agent.service 2>/dev/null || true
  fi
  rm -f "$UNIT" "$DROPIN/storage.conf" "$MODULES" "$UDEV_RULES"
  rmdir "$DROPIN" 2>/dev/null || true
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
  python3 -c 'import venv, ensurepip' 2>/dev/null ||
    die "python3-venv is missing and apt-get could not install it (no network?): install it" \
        "(sudo apt-get install python3-venv, or dpkg -i its .deb), then run this installer again"
  for g in gpio i2c dialout; do getent group "$g" >/dev/null || groupadd --system "$g"; done
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/hall-agent --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    say "created user $USER_NAME"
  fi
  usermod -aG gpio,i2c,dialout "$USER_NAME"
fi

# 1b. device access (also in staging roots, for images). The unit's DeviceAllow=char-i2c,
# char-ttyUSB, char-ttyACM need the driver registered when the unit starts, or the
# device stays blocked (EPERM) until a restart: load them at boot, before the unit.
install -d -m 0755 "$(dirname "$MODULES")"
cat > "$MODULES" <<'EOF'
# written by hall-agent's deploy/install.sh: drivers loaded at boot, before hall-agent.service
# starts, so that the unit's device rules (DeviceAllow=char-i2c, char-ttyUSB, char-ttyACM)
# also cover a USB serial adapter plugged in or enumerated later
i2c-dev
usbserial
cdc_acm
EOF
chmod 0644 "$MODULES"
if live; then
  for m in i2c-dev usbserial cdc_acm; do modprobe -q "$m" 2>/dev/null || true; done
fi
# Raspberry Pi OS gives /dev/i2c-* to the group i2c and /dev/gpiochip* to gpio; plain
# Debian leaves them root:root 0600. Add the rules where the OS has none.
if grep -qsE 'i2c-dev.*GROUP="i2c"' "$ROOT"/lib/udev/rules.d/*.rules "$ROOT"/usr/lib/udev/rules.d/*.rules \
     $(ls "$ROOT"/etc/udev/rules.d/*.rules 2>/dev/null | grep -v '/60-hall-agent.rules$'); then
  rm -f "$UDEV_RULES"
else
  install -d -m 0755 "$(dirname "$UDEV_RULES")"
  cat > "$UDEV_RULES" <<'EOF'
# written by hall-agent's deploy/install.sh (this OS has no rule of its own for them):
# the I2C buses and GPIO chips to the groups the service runs with
SUBSYSTEM=="i2c-dev", GROUP="i2c", MODE="0660"
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
EOF
  chmod 0644 "$UDEV_RULES"
  if live && command -v udevadm >/dev/null 2>&1; then
    { udevadm control --reload && udevadm trigger --subsystem-match=i2c-dev --subsystem-match=gpio; } \
      2>/dev/null || true
  fi
  say "installed $UDEV_RULES (I2C to the group i2c, GPIO to gpio)"
fi

if live; then
  if command -v raspi-config >/dev/null 2>&1; then
    raspi-config nonint do_i2c 0          # enable I2C
    raspi-config nonint do_serial_hw 0    # enable the UART ...
    raspi-config nonint do_serial_cons 1  # ... without a login console on it
    say "enabled I2C and the serial port (a reboot may be needed the first time)"
  fi
fi

# 2. the program: a virtualenv in /opt/hall-agent (system site packages for python3-lgpio)
mkdir -p "$(dirname "$PREFIX")"
# a venv left broken by an earlier failure (no ensurepip, interrupted, Python upgraded) is rebuilt
if [ -e "$PREFIX" ] && ! "$PREFIX/bin/python" -m pip --version >/dev/null 2>&1; then
  say "rebuilding the incomplete $PREFIX"
  rm -rf "$PREFIX"
fi
if [ ! -e "$PREFIX" ]; then
  python3 -m venv --system-site-packages "$PREFIX" || {
    rm -rf "$PREFIX"
    die "could not create the virtualenv $PREFIX (is python3-venv installed?)"
  }
fi
# shellcheck disable=SC2086
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check ${HALL_AGENT_PIP_ARGS:-} "$SRC" ||
  die "pip could not install hall-agent (no network? for an offline install set" \
      "HALL_AGENT_PIP_ARGS=\"--no-index --find-links DIR\" with wheels built elsewhere); run this installer again"
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

# 4. the unit, and a drop-in giving it storage.dir when that is not /var/lib/hall-agent
# (ProtectSystem=strict makes the rest of the file system read-only to the service)
install -d -m 0755 "$(dirname "$UNIT")"
install -m 0644 "$SRC/systemd/hall-agent.service" "$UNIT"
STORAGE=$("$PREFIX/bin/python" - "$ETC/config.toml" 2>/dev/null <<'EOF' || true
import sys
from hall_agent.config import load
d = load(sys.argv[1]).storage.dir
print(d.resolve() if d is not None else "")
EOF
)
case "$STORAGE" in
  ""|/var/lib/hall-agent|/var/lib/hall-agent/*)
    rm -f "$DROPIN/storage.conf"; rmdir "$DROPIN" 2>/dev/null || true ;;
  *)
    install -d -m 0755 "$DROPIN"
    printf '%s\n' "# written by deploy/install.sh from storage.dir in /etc/hall-agent/config.toml:" \
      "# run the installer again after changing it" "[Service]" "ReadWritePaths=$STORAGE" > "$DROPIN/storage.conf"
    chmod 0644 "$DROPIN/storage.conf"
    if live; then
      install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STORAGE"
    else
      install -d -m 0750 "$ROOT$STORAGE"
    fi
    say "storage.dir is $STORAGE: added it to the unit ($DROPIN/storage.conf)" ;;
esac
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
