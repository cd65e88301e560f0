#!/usr/bin/env bash
# Add a hall to the central broker: its password and its ACL block.
#   deploy/mosquitto/add-hall.sh CITY BRANCH HALL [ACL_FILE] [PASSWD_FILE]
# Prints the generated password once; give it to the hall's /etc/hall-agent/mqtt-password.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,4p' "$0"; exit 2; }
city=$1 branch=$2 hall=$3
acl=${4:-/etc/mosquitto/hall-agent.acl}
passwd=${5:-/etc/mosquitto/hall-agent.passwd}
for part in "$city" "$branch" "$hall"; do
  [[ "$part" =~ ^[a-z0-9][a-z0-9.-]*$ ]] || { echo "add-hall: '$part' is not an id (a-z, 0-9, '.', '-')" >&2; exit 2; }
done
if grep -qx "user $hall" "$acl" 2>/dev/null; then
  echo "add-hall: $hall is already in $acl" >&2; exit 1
fi
base="halls/$city/$branch/$hall"
printf '\nuser %s\ntopic write %s/#\ntopic read %s/cmd\ntopic read %s/config/desired\ntopic read %s/sim/#\ntopic read %s/alert/#\ntopic read %s/probe/#\n' \
  "$hall" "$base" "$base" "$base" "$base" "$base" "$base" >> "$acl"
secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)
touch "$passwd"
mosquitto_passwd -b "$passwd" "$hall" "$secret"
echo "$hall: password $secret (base topic $base); reload mosquitto: systemctl reload mosquitto"
