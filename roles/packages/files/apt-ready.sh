#!/bin/sh
# Make apt usable before botvps installs anything (run by the packages role as root):
#   1. enough free space on / and /var (else stop before any change, naming the mount);
#   2. no other apt/dpkg process holding the locks (else wait, bounded, saying who holds them);
#   3. an installation a reset or a cut connection interrupted is finished (dpkg --configure -a);
#   4. python3-apt, which Ansible's apt module needs, is there.
# Arguments: MIN_FREE_MB LOCK_TIMEOUT_SECONDS (APT_READY_LOCKS: other lock files, for tests). Output lines are read by the role:
#   "waited N s for PID (COMMAND)" and "repaired".
set -eu
min_free_mb=$1
timeout=$2

for mount in / /var; do
  free_kb=$(df -Pk "$mount" | awk 'NR == 2 { print $4 }')
  if [ "$free_kb" -lt $((min_free_mb * 1024)) ]; then
    echo "only $((free_kb / 1024)) MB free on $(df -P "$mount" | awk 'NR == 2 { print $6 }') (botvps needs $min_free_mb MB" \
      "before it changes anything): free space (apt-get clean; journalctl --vacuum-size=100M; old bot logs)" \
      "or lower packages_min_free_mb" >&2
    exit 3
  fi
done

# Who holds an apt or dpkg lock: the pid from /proc/locks (apt and dpkg take fcntl locks).
holder() {
  for lock in ${APT_READY_LOCKS:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock}; do
    [ -e "$lock" ] || continue
    inode=$(stat -c %i "$lock")
    pid=$(awk -v inode="$inode" '{ n = split($6, f, ":"); if (f[n] == inode) { print $5; exit } }' /proc/locks)
    if [ -n "$pid" ] && [ "$pid" != "$$" ] && [ -d "/proc/$pid" ]; then
      echo "$pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-80 | sed 's/ *$//')) holds $lock"
      return 0
    fi
  done
  return 1
}

waited=0
first=""
while who=$(holder); do
  [ -n "$first" ] || first=$who
  if [ "$waited" -ge "$timeout" ]; then
    echo "apt is still busy after ${timeout} s: PID $who. Let it finish (systemctl status apt-daily-upgrade.service" \
      "unattended-upgrades.service) or stop it, then provision again; packages_lock_timeout sets the wait" >&2
    exit 4
  fi
  sleep 2
  waited=$((waited + 2))
done
[ "$waited" -eq 0 ] || echo "waited $waited s for apt: PID $first"

if [ -n "$(dpkg --audit 2>/dev/null)" ]; then
  DEBIAN_FRONTEND=noninteractive dpkg --configure -a --force-confdef --force-confold
  echo repaired
fi

# Ansible's apt module needs python3-apt. It installs it itself under Ansible's strategies, not
# under Mitogen's; installed here, the same either way.
if ! python3 -c 'import apt_pkg' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout="$timeout"
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout="$timeout" python3-apt >/dev/null
  echo repaired: installed python3-apt
fi
