#!/usr/bin/env bash
# Single-node SLURM cluster for tests, without systemd.
#
#   cluster.sh start   install Debian's packages if missing, write configs,
#                      start munged, mariadbd, slurmdbd, slurmctld, slurmd and
#                      wait until the node is idle and sacct answers
#   cluster.sh stop    stop the five daemons
#   cluster.sh status  show each daemon and sinfo; exit 0 only if usable
#
# Must run as root on Debian 12 (SLURM 22.05). Idempotent: `start` on a
# running cluster only checks readiness. Daemon output goes to
# /var/log/{slurm,munge,mysql}/, never to this script's stdout.
#
# Environment knobs:
#   SLURM_CLUSTER_CPUS     CPUs declared for the node (default: max(nproc, 8);
#                          more than the hardware is allowed so that small
#                          test jobs run concurrently)
#   SLURM_CLUSTER_TIMEOUT  seconds to wait for each readiness step (default 60)
set -uo pipefail

CLUSTER=exca
NODE=$(hostname -s)
CPUS=${SLURM_CLUSTER_CPUS:-}
TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-60}
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmdbd-test-only

ETC=/etc/slurm
RUN_SLURM=/run/slurm
LOG_SLURM=/var/log/slurm
LIB_SLURM=/var/lib/slurm
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_LOG=/var/log/mysql/mariadbd-test.log

T0=$(date +%s%N)
say() {
    local ds=$((($(date +%s%N) - T0) / 100000000))
    printf '[slurm %3d.%ds] %s\n' $((ds / 10)) $((ds % 10)) "$*"
}
die() {
    echo "[slurm] ERROR: $*" >&2
    local f
    for f in ${LOGS_ON_ERROR:-}; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

# ---------------------------------------------------------------- processes
# A process is alive if /proc/PID/stat exists, is not a zombie (PID 1 on some
# machines reaps late) and its command name matches.
alive_pid() { # pid name
    local pid=$1 name=$2 stat comm state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    comm=${stat#*(}; comm=${comm%%)*}
    state=${stat##*) }; state=${state%% *}
    [[ "$state" != Z && "$state" != X ]] || return 1
    [[ "$comm" == "${name:0:15}" ]]
}

# pids of a daemon: from its pid file, else by exact command name
daemon_pids() { # name pidfile
    local name=$1 pidfile=$2 pid out=""
    if [ -f "$pidfile" ]; then
        pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null)
        alive_pid "$pid" "$name" && out=$pid
    fi
    if [ -z "$out" ]; then
        for pid in $(pgrep -x "$name" 2>/dev/null); do
            alive_pid "$pid" "$name" && out="$out $pid"
        done
    fi
    echo $out
}

running() { [ -n "$(daemon_pids "$1" "$2")" ]; }

stop_daemon() { # name pidfile
    local name=$1 pidfile=$2 pids pid i
    pids=$(daemon_pids "$name" "$pidfile")
    if [ -z "$pids" ]; then
        say "$name: not running"
        return 0
    fi
    kill -TERM $pids 2>/dev/null
    for i in $(seq 1 150); do # 15 s
        local left=""
        for pid in $pids; do alive_pid "$pid" "$name" && left="$left $pid"; done
        [ -z "$left" ] && { say "$name: stopped"; rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    kill -KILL $pids 2>/dev/null
    sleep 0.5
    say "$name: killed"
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s
wait_for() {
    local timeout=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + timeout))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && die "timed out after ${timeout}s waiting for $what"
        sleep 0.2
    done
}

# ------------------------------------------------------------------ install
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # keep maintainer scripts from starting services: we start them ourselves
    local own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local log=/tmp/slurm-cluster-apt.log ok=""
    # wait for a dpkg lock held by another apt run rather than fail
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends)
    if "${apt[@]}" install "${missing[@]}" >"$log" 2>&1; then
        ok=1
    else
        say "apt-get install failed, running apt-get update and retrying"
        apt-get -q -o DPkg::Lock::Timeout=120 update >>"$log" 2>&1
        "${apt[@]}" install "${missing[@]}" >>"$log" 2>&1 && ok=1
    fi
    [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ -n "$ok" ] || { tail -n 20 "$log" >&2; die "could not install ${missing[*]} (log: $log)"; }
    say "installed"
}

# ------------------------------------------------------------------- config
# write FILE from stdin; returns 0 if the content changed
write_if_changed() { # file
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mv "$tmp" "$1"
    return 0
}

write_configs() {
    local changed=1 hw mem
    if [ -z "$CPUS" ]; then
        CPUS=$(nproc)
        [ "$CPUS" -lt 8 ] && CPUS=8
    fi
    # RealMemory must not exceed what slurmd detects: take 90% of MemTotal
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$ETC"
    write_if_changed "$ETC/slurm.conf" <<EOF && changed=0
# Generated by tests/slurm/cluster.sh: single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=$RUN_SLURM/slurmctld.pid
SlurmdPidFile=$RUN_SLURM/slurmd.pid
SlurmdSpoolDir=$LIB_SLURM/slurmd
StateSaveLocation=$LIB_SLURM/slurmctld
SlurmctldLogFile=$LOG_SLURM/slurmctld.log
SlurmdLogFile=$LOG_SLURM/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# declared CPUs may exceed the hardware (lets small test jobs run together)
SlurmdParameters=config_overrides
# scheduling: immediate, short timers
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=30
KillWait=2
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=60
# accounting (sacct) through slurmdbd + MariaDB
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=test Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    write_if_changed "$ETC/slurmdbd.conf" <<EOF && changed=0
# Generated by tests/slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=$LOG_SLURM/slurmdbd.log
PidFile=$RUN_SLURM/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
    chown slurm:slurm "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"
    chmod 644 "$ETC/slurm.conf"
    return $changed
}

prepare_dirs() {
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    [ -e /var/log/munge/munged.log ] && chown munge:munge /var/log/munge/munged.log
    install -d -o munge -g munge -m 700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key

    install -d -o mysql -g mysql -m 755 /run/mysqld
    install -d -o mysql -g adm -m 2750 /var/log/mysql

    install -d -o slurm -g slurm -m 755 "$RUN_SLURM" "$LOG_SLURM" "$LIB_SLURM"
    install -d -o slurm -g slurm -m 700 "$LIB_SLURM/slurmctld"
    install -d -o root -g root -m 755 "$LIB_SLURM/slurmd"
}

# ------------------------------------------------------------------ daemons
start_munge() {
    if running munged "$MUNGE_PID"; then say "munged: running"; return; fi
    LOGS_ON_ERROR="/var/log/munge/munged.log /var/log/munge/munged.out"
    # munged forks into the background once ready; it writes munged.log
    # itself (and refuses a log file it does not own)
    runuser -u munge -- /usr/sbin/munged </dev/null >>/var/log/munge/munged.out 2>&1 \
        || die "munged failed to start"
    wait_for 10 "munge" munge -n
    say "munged: started"
}

mysql_up() { mariadb --protocol=socket -S "$MYSQL_SOCK" -uroot -e 'SELECT 1'; }

start_mariadb() {
    LOGS_ON_ERROR=$MYSQL_LOG
    if running mariadbd "$MYSQL_PID" && mysql_up >/dev/null 2>&1; then
        say "mariadbd: running"
    else
        if [ ! -d /var/lib/mysql/mysql ]; then
            say "initializing MariaDB data dir"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$MYSQL_LOG" 2>&1 \
                || die "mariadb-install-db failed"
        fi
        # socket only, and no fsync per transaction (test data)
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" \
            --innodb-flush-log-at-trx-commit=0 --skip-log-bin \
            --innodb-lock-wait-timeout=900 \
            </dev/null >>"$MYSQL_LOG" 2>&1 &
        wait_for "$TIMEOUT" "mariadbd" mysql_up
        say "mariadbd: started"
    fi
    mariadb --protocol=socket -S "$MYSQL_SOCK" -uroot <<EOF || die "could not create database $DB_NAME"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_up() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    LOGS_ON_ERROR="$LOG_SLURM/slurmdbd.log $LOG_SLURM/slurmdbd.out"
    if running slurmdbd "$RUN_SLURM/slurmdbd.pid"; then
        say "slurmdbd: running"
    else
        setsid /usr/sbin/slurmdbd -D </dev/null >>"$LOG_SLURM/slurmdbd.out" 2>&1 &
        wait_for "$TIMEOUT" "slurmdbd" dbd_up
        say "slurmdbd: started"
    fi
    if ! dbd_up 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "could not register cluster $CLUSTER"
        say "cluster $CLUSTER registered in slurmdbd"
    fi
}

start_slurmctld() {
    LOGS_ON_ERROR="$LOG_SLURM/slurmctld.log $LOG_SLURM/slurmctld.out"
    if running slurmctld "$RUN_SLURM/slurmctld.pid"; then say "slurmctld: running"; return; fi
    setsid /usr/sbin/slurmctld -D </dev/null >>"$LOG_SLURM/slurmctld.out" 2>&1 &
    wait_for "$TIMEOUT" "slurmctld" scontrol ping
    say "slurmctld: started"
    # jobs recovered from the saved state belong to an earlier run whose
    # processes are gone: cancel them instead of letting them run again
    local left
    left=$(squeue -h -o %A 2>/dev/null | sort -un | tr '\n' ' ')
    if [ -n "${left// /}" ]; then
        scancel $left >/dev/null 2>&1
        say "cancelled jobs left from an earlier run: $left"
    fi
}

start_slurmd() {
    LOGS_ON_ERROR="$LOG_SLURM/slurmd.log $LOG_SLURM/slurmd.out"
    if running slurmd "$RUN_SLURM/slurmd.pid"; then say "slurmd: running"; return; fi
    setsid /usr/sbin/slurmd -D -N "$NODE" </dev/null >>"$LOG_SLURM/slurmd.out" 2>&1 &
    sleep 0.3
    running slurmd "$RUN_SLURM/slurmd.pid" || die "slurmd exited"
    say "slurmd: started"
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

node_ready() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
    esac
    return 1
}

sacct_up() { sacct -n -X -a -S now-1minutes -o JobID; }

wait_ready() {
    local end=$(($(date +%s) + TIMEOUT)) state resumed=""
    LOGS_ON_ERROR="$LOG_SLURM/slurmd.log $LOG_SLURM/slurmctld.log"
    while ! node_ready; do
        state=$(node_state)
        # a node left down/drained by an earlier run: put it back
        if [ -z "$resumed" ] && [[ "$state" == down* || "$state" == drain* ]]; then
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 && resumed=1
        fi
        [ "$(date +%s)" -ge "$end" ] && die "node $NODE not ready after ${TIMEOUT}s (state: ${state:-unknown})"
        sleep 0.2
    done
    LOGS_ON_ERROR=$LOG_SLURM/slurmdbd.log
    wait_for "$TIMEOUT" "sacct" sacct_up
    say "ready: node $NODE $(node_state), sacct answers"
}

# ----------------------------------------------------------------- commands
require_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

cmd_start() {
    require_root
    install_packages
    id slurm >/dev/null 2>&1 || die "user slurm missing after install"
    if write_configs && running slurmctld "$RUN_SLURM/slurmctld.pid"; then
        say "configuration changed: restarting slurm daemons"
        stop_daemon slurmd "$RUN_SLURM/slurmd.pid"
        stop_daemon slurmctld "$RUN_SLURM/slurmctld.pid"
        stop_daemon slurmdbd "$RUN_SLURM/slurmdbd.pid"
    fi
    prepare_dirs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_ready
}

cmd_stop() {
    require_root
    stop_daemon slurmd "$RUN_SLURM/slurmd.pid"
    stop_daemon slurmctld "$RUN_SLURM/slurmctld.pid"
    stop_daemon slurmdbd "$RUN_SLURM/slurmdbd.pid"
    stop_daemon mariadbd "$MYSQL_PID"
    stop_daemon munged "$MUNGE_PID"
}

cmd_status() {
    local ok=0 d
    for d in munged:$MUNGE_PID mariadbd:$MYSQL_PID slurmdbd:$RUN_SLURM/slurmdbd.pid \
        slurmctld:$RUN_SLURM/slurmctld.pid slurmd:$RUN_SLURM/slurmd.pid; do
        local name=${d%%:*} pids
        pids=$(daemon_pids "$name" "${d#*:}")
        if [ -n "$pids" ]; then
            printf '%-10s running (pid %s)\n' "$name" "$pids"
        else
            printf '%-10s stopped\n' "$name"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null; then
        sinfo 2>&1 || ok=1
        node_ready || ok=1
        sacct_up >/dev/null 2>&1 || { echo "sacct: not answering"; ok=1; }
    else
        echo "sinfo: not installed"
        ok=1
    fi
    [ $ok -eq 0 ] && echo "cluster: usable" || echo "cluster: NOT usable"
    return $ok
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop && cmd_start ;;
    *)
        echo "usage: $0 start|stop|status|restart" >&2
        exit 2
        ;;
esac
