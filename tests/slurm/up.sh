#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests in tests/slurm/: Debian's SLURM 22.05,
# munge, and run accounting (slurmdbd over a private MariaDB), all started by hand (no systemd),
# all on 127.0.0.1 and on ports of their own, so a real cluster's daemons are never touched.
#
#   bash tests/slurm/up.sh      # installs what is missing (root: apt-get), starts the daemons,
#                               # waits for the node to be idle; prints `export SLURM_CONF=...`
#   bash tests/slurm/down.sh    # stops every daemon this script started, by its PID
#
# Everything lives under $LRA_SLURM_DIR (default /tmp/lra-slurm): configs, state, logs, PID
# files. Nothing is written to /etc; clients find the cluster through SLURM_CONF.
set -euo pipefail
DIR=${LRA_SLURM_DIR:-/tmp/lra-slurm}
PORT=${LRA_SLURM_PORT:-16817}  # slurmctld; slurmd, slurmdbd and MariaDB take the next three
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

say() { printf 'slurm-up: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || fail "needs root to install ${missing[*]} (apt-get)"
    command -v apt-get >/dev/null || fail "no apt-get: install ${missing[*]} by hand"
    say "installing ${missing[*]}"
    # the packages' own start scripts are refused (no init system here): we start them below
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.lra && chmod +x /usr/sbin/policy-rc.d.lra
    [[ -e /usr/sbin/policy-rc.d ]] || cp /usr/sbin/policy-rc.d.lra /usr/sbin/policy-rc.d
    # shellcheck disable=SC2064
    trap "cmp -s /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.lra && rm -f /usr/sbin/policy-rc.d; \
          rm -f /usr/sbin/policy-rc.d.lra" EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; } || fail "apt-get install ${missing[*]} failed"
fi
[[ $(id -u) == 0 ]] || fail "the daemons run as root (SlurmUser=root): run as root"

if [[ -f $DIR/pids ]]; then
    alive=0
    while read -r name pid; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$DIR/pids"
    ((alive)) && fail "a cluster from $DIR is already running: bash tests/slurm/down.sh first"
fi
mkdir -p "$DIR"/{state,spool,log,run,db}
: >"$DIR/pids"

host=$(hostname -s)
node=$(slurmd -C | head -1)  # NodeName=HOST CPUs=.. Boards=.. ... RealMemory=..
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
mem=$((mem * 9 / 10))  # leave the system its share: a node whose memory falls short drains

# --- munge: SLURM's daemons reach it on its default socket -------------------------------------
# (slurm.conf's AuthInfo=socket= is not used by every connection, e.g. slurmctld to slurmdbd).
# A munged already answering there (a real cluster's) is used as it is, and left running.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "using the munged already running"
else
    [[ -s /etc/munge/munge.key ]] || fail "/etc/munge/munge.key missing: reinstall munge"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    munged --force --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        || fail "munged did not start: $DIR/log/munged.log"
    echo "munged $(cat "$DIR/run/munged.pid")" >>"$DIR/pids"
fi

# --- MariaDB for slurmdbd, on 127.0.0.1:PORT+3 ----------------------------------------------
DB_PORT=$((PORT + 3))
DB_SOCKET=$DIR/run/mysqld.sock
if [[ ! -d $DIR/db/mysql ]]; then
    mariadb-install-db --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed: see $DIR/log"
fi
setsid mariadbd --no-defaults --datadir="$DIR/db" --user=root --bind-address=127.0.0.1 \
    --port="$DB_PORT" --socket="$DB_SOCKET" --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
echo "mariadbd $!" >>"$DIR/pids"
for _ in $(seq 100); do [[ -S $DB_SOCKET ]] && break; sleep 0.2; done
[[ -S $DB_SOCKET ]] || fail "MariaDB did not start: $DIR/log/mariadbd.log"
mariadb --no-defaults --socket="$DB_SOCKET" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'lra-local';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# --- configs --------------------------------------------------------------------------------
cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=lra-local
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/slurmdbd.conf"

cat >"$DIR/slurm.conf" <<EOF
ClusterName=lra-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
KillWait=10
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$DIR/slurm.conf  # slurmdbd reads slurmdbd.conf from the same folder

# --- the daemons ------------------------------------------------------------------------------
started() {  # NAME PIDFILE: wait for the daemon's PID file, then record the PID
    for _ in $(seq 100); do [[ -s $2 ]] && break; sleep 0.1; done
    [[ -s $2 ]] || fail "$1 did not start: see $DIR/log/$1.log"
    echo "$1 $(cat "$2")" >>"$DIR/pids"
}
slurmdbd && started slurmdbd "$DIR/run/slurmdbd.pid"
for _ in $(seq 50); do timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
timeout 10 sacctmgr -i add cluster lra-local >/dev/null 2>&1 || true
slurmctld -i && started slurmctld "$DIR/run/slurmctld.pid"
slurmd && started slurmd "$DIR/run/slurmd.pid"

for _ in $(seq 150); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    [[ $state == idle ]] && break
    sleep 0.2
done
[[ $state == idle ]] || fail "node $host is '${state:-unknown}', not idle: see $DIR/log"
say "node $host idle ($cpus CPUs, $mem MB); daemons: $(cut -d' ' -f1 "$DIR/pids" | xargs)"
echo "export SLURM_CONF=$DIR/slurm.conf"
