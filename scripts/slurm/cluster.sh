#!/usr/bin/env bash
# Throw-away single-node SLURM 22.05 cluster for tests and CI (see README.md beside this file).
#
#   cluster.sh check      exit 0 if the fixture can run here, else print why and exit 77 (skip)
#   cluster.sh up DIR     install what is missing, start munged + slurmctld + slurmd privately
#                         under DIR, wait until the node is idle, write DIR/env.sh
#   cluster.sh down DIR   stop what `up DIR` started, by the PIDs in its pid files (idempotent)
#
# Everything is bounded in time; nothing is ever killed by process name.
set -uo pipefail

PKGS=(munge slurmctld slurmd slurm-client)
BINS=(munged mungekey munge unmunge slurmctld slurmd sbatch squeue scontrol sinfo scancel)
UP_TIMEOUT=${SLURM_FIXTURE_UP_TIMEOUT:-60}       # s, until `scontrol ping` + node idle
DOWN_TIMEOUT=${SLURM_FIXTURE_DOWN_TIMEOUT:-20}   # s, for daemons to exit after shutdown
APT_TIMEOUT=${SLURM_FIXTURE_APT_TIMEOUT:-600}    # s, for each apt-get call
POLICY=/usr/sbin/policy-rc.d
POLICY_MARK='temporary, from qsweep scripts/slurm/cluster.sh'

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
    echo "usage: $0 check | up DIR | down DIR" >&2
    exit 2
}

# ---------------------------------------------------------------- packages

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing_pkgs() {
    local p
    for p in "${PKGS[@]}"; do pkg_installed "$p" || echo "$p"; done
}

have_bins() {
    local b
    for b in "${BINS[@]}"; do command -v "$b" >/dev/null 2>&1 || return 1; done
}

apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_can_install() {   # pkgs... ; a dry run, no change to the system
    command -v apt-get >/dev/null 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive timeout 120 \
        apt-get install -s -qq --no-install-recommends "$@" >/dev/null 2>&1
}

POLICY_CREATED=0
remove_policy() {
    if [ "$POLICY_CREATED" = 1 ]; then
        rm -f "$POLICY"
        POLICY_CREATED=0
    fi
}

install_missing() {
    local missing
    mapfile -t missing < <(missing_pkgs)
    if [ "${#missing[@]}" -eq 0 ]; then
        have_bins || die "packages installed but a binary is missing (want: ${BINS[*]})"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get"
    local t0; t0=$(now)
    log "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting the system services.
    if [ -f "$POLICY" ] && [ ! -L "$POLICY" ] && grep -qF "$POLICY_MARK" "$POLICY"; then
        POLICY_CREATED=1   # ours, left behind by a run that was killed: use it, then remove it
    elif [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
        log "leaving the existing $POLICY in place"
    else
        printf '#!/bin/sh\n# %s\nexit 101\n' "$POLICY_MARK" >"$POLICY" \
            && chmod 755 "$POLICY" && POLICY_CREATED=1
    fi
    local aptopts=(-y -q -o DPkg::Lock::Timeout=120
                   -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local rc=0
    DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" apt-get update -q </dev/null >&2 || rc=$?
    if [ "$rc" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" \
            apt-get install "${aptopts[@]}" --no-install-recommends "${missing[@]}" </dev/null >&2 || rc=$?
    fi
    remove_policy
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
    have_bins || die "installed ${missing[*]} but a binary is still missing (want: ${BINS[*]})"
    log "installed in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------- processes

pid_from_file() {   # file -> a live PID on stdout, or return 1
    local f=$1 pid
    [ -s "$f" ] || return 1
    read -r pid <"$f" 2>/dev/null || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    is_zombie "$pid" && return 1
    echo "$pid"
}

is_zombie() {   # pid -- dead but not yet reaped
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "${st%% *}" = Z ]
}

# Is PID still the daemon we started? Its command line must contain MARK (a path under DIR),
# so a recycled PID is never signalled.
pid_is_ours() {   # pid mark
    [ -r "/proc/$1/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

wait_gone() {   # seconds pid...  -> 0 when all are gone
    local deadline=$((SECONDS + $1)) p alive
    shift
    while :; do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && ! is_zombie "$p" && alive=1; done
        [ "$alive" = 0 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

stop_pid() {   # name pid mark grace  -- TERM, wait, KILL; only if the PID is ours
    local name=$1 pid=$2 mark=$3 grace=$4
    { kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid"; } || return 0
    if ! pid_is_ours "$pid" "$mark"; then
        log "warning: PID $pid ($name) does not look like ours (no '$mark' in its command line); not signalling it"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    wait_gone "$grace" "$pid" && return 0
    log "$name (PID $pid) ignored SIGTERM for ${grace} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    wait_gone 5 "$pid" || log "warning: $name (PID $pid) is still alive"
}

# PIDs holding a unix socket whose path is under DIR (slurmstepd listens on
# SlurmdSpoolDir/<node>_<job>.<step>); found through /proc, not by process name.
pids_with_sockets_under() {   # dir
    local dir=$1 inodes pid fd link
    inodes=$(awk -v d="$dir/" 'NR > 1 && index($8, d) == 1 { print $7 }' /proc/net/unix 2>/dev/null | sort -u)
    [ -n "$inodes" ] || return 0
    for fd in /proc/[0-9]*/fd/*; do
        link=$(readlink "$fd" 2>/dev/null) || continue
        case $link in socket:\[*\]) ;; *) continue ;; esac
        link=${link#socket:[}; link=${link%]}
        if grep -qxF -- "$link" <<<"$inodes"; then
            pid=${fd#/proc/}; echo "${pid%%/*}"
        fi
    done | sort -u
}

descendants() {   # pid -> all its descendants' PIDs (from the parent links in /proc/*/stat)
    cat /proc/[0-9]*/stat 2>/dev/null \
        | sed -n 's/^\([0-9]*\) .*) [A-Za-z] \([0-9]*\) .*/\1 \2/p' \
        | awk -v root="$1" '
            { parent[$1] = $2 }
            END { for (p in parent) { q = p
                                      while (q in parent && q != root && q > 1) q = parent[q]
                                      if (q == root && p != root) print p } }'
}

# ---------------------------------------------------------------- layout

set_paths() {   # DIR (absolute)
    D=$1
    CONF=$D/slurm.conf
    ENVSH=$D/env.sh
    MUNGE_DIR=$D/munge
    MUNGE_SOCK_DIR=$D/munge/run
    MUNGE_SOCK=$MUNGE_SOCK_DIR/munge.socket
    MUNGE_KEY=$MUNGE_DIR/munge.key
    MUNGE_PID=$MUNGE_DIR/munged.pid
    MUNGE_LOG=$MUNGE_DIR/munged.log
    MUNGE_SEED=$MUNGE_DIR/munged.seed
    STATE=$D/state
    SPOOL=$D/spool
    RUN=$D/run
    LOGS=$D/log
    CTLD_PID=$RUN/slurmctld.pid
    SLURMD_PID=$RUN/slurmd.pid
    CTLD_LOG=$LOGS/slurmctld.log
    SLURMD_LOG=$LOGS/slurmd.log
    JOBCOMP=$LOGS/jobcomp.txt
}

# ---------------------------------------------------------------- check

cmd_check() {
    if [ "$(id -u)" != 0 ]; then
        echo "slurm fixture: skipped: needs root (munged and slurmd run as root)"
        exit 77
    fi
    local missing
    mapfile -t missing < <(missing_pkgs)
    if [ "${#missing[@]}" -eq 0 ]; then
        if have_bins; then exit 0; fi
        echo "slurm fixture: skipped: packages installed but a binary is missing (${BINS[*]})"
        exit 77
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "slurm fixture: skipped: ${missing[*]} not installed and no apt-get"
        exit 77
    fi
    apt_can_install "${missing[@]}" && exit 0
    if ! apt_lists_present; then   # no package lists yet: refresh them once, bounded
        DEBIAN_FRONTEND=noninteractive timeout 180 apt-get update -qq </dev/null >/dev/null 2>&1
        apt_can_install "${missing[@]}" && exit 0
    fi
    echo "slurm fixture: skipped: ${missing[*]} not installed and apt cannot install them"
    exit 77
}

# ---------------------------------------------------------------- down

cmd_down() {
    local dir=$1
    if [ ! -d "$dir" ]; then
        log "down: $dir does not exist; nothing to stop"
        return 0
    fi
    set_paths "$(cd "$dir" && pwd -P)"
    local t0 pid ctld='' slurmd='' stepds
    t0=$(now)
    ctld=$(pid_from_file "$CTLD_PID") || ctld=''
    slurmd=$(pid_from_file "$SLURMD_PID") || slurmd=''
    if [ -n "$ctld" ] && [ -f "$CONF" ] && pid_is_ours "$ctld" "$CONF"; then
        export SLURM_CONF=$CONF
        # End what still runs, so that no slurmstepd or job process is left behind.
        if [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; then
            timeout 10 scancel --partition=debug >/dev/null 2>&1
            local deadline=$((SECONDS + 15))
            # (Without a live slurmd they cannot end: the spool-socket sweep below handles that.)
            while [ -n "$slurmd" ] && pid_from_file "$SLURMD_PID" >/dev/null \
                    && [ -n "$(timeout 10 squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] \
                    && [ "$SECONDS" -lt "$deadline" ]; do
                sleep 0.3
            done
        fi
        if timeout 10 scontrol shutdown >/dev/null 2>&1; then
            # slurmctld tells slurmd to stop too; give both a bounded time to exit.
            local pids=("$ctld")
            [ -n "$slurmd" ] && pids+=("$slurmd")
            wait_gone "$DOWN_TIMEOUT" "${pids[@]}" || log "daemons still up ${DOWN_TIMEOUT} s after shutdown"
        else
            log "scontrol shutdown failed; signalling the daemons"
        fi
    fi
    [ -n "$slurmd" ] && stop_pid slurmd "$slurmd" "$CONF" 10
    [ -n "$ctld" ] && stop_pid slurmctld "$ctld" "$CONF" 10
    # Last resort: step daemons whose sockets are in our spool (left when slurmd died early).
    if [ -d "$SPOOL" ]; then
        stepds=$(pids_with_sockets_under "$SPOOL")
        for pid in $stepds; do
            log "warning: killing leftover slurmstepd PID $pid (socket in $SPOOL) and its job processes"
            # shellcheck disable=SC2046
            kill -KILL "$pid" $(descendants "$pid") 2>/dev/null
        done
    fi
    pid=$(pid_from_file "$MUNGE_PID") && stop_pid munged "$pid" "$MUNGE_SOCK" 10
    # Pid files of daemons that are gone are stale: remove them so a second down is instant.
    for pid in "$CTLD_PID" "$SLURMD_PID" "$MUNGE_PID"; do
        [ -e "$pid" ] && ! pid_from_file "$pid" >/dev/null && rm -f "$pid"
    done
    log "down in $(elapsed "$t0") s"
    return 0
}

# ---------------------------------------------------------------- up

used_tcp_ports() {
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$f" ] && awk 'NR > 1 { split($2, a, ":"); print a[length(a)] }' "$f"
    done | while read -r hex; do echo $((16#$hex)); done | sort -un
}

pick_free_ports() {   # n -> n distinct TCP ports free on 127.0.0.1
    local n=$1 used picked=() p tries=0
    used=" $(used_tcp_ports | tr '\n' ' ') "
    while [ "${#picked[@]}" -lt "$n" ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 500 ] && return 1
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
        case "$used ${picked[*]} " in *" $p "*) continue ;; esac
        # Nothing answers there either (belt and braces over /proc/net/tcp).
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
        picked+=("$p")
    done
    echo "${picked[@]}"
}

first_untraversable() {   # dir -> prints the first folder from / down that others cannot enter
    local d=$1 chain=() mode
    while :; do chain=("$d" "${chain[@]}"); [ "$d" = / ] && break; d=$(dirname "$d"); done
    for d in "${chain[@]}"; do
        mode=$(stat -L -c %a "$d" 2>/dev/null) || { echo "$d"; return 0; }
        if (( (8#$mode & 1) == 0 )); then echo "$d"; return 0; fi
    done
    return 1
}

print_logs() {
    local f
    for f in "$MUNGE_LOG" "$CTLD_LOG" "$SLURMD_LOG"; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f" >&2
        tail -n 25 "$f" >&2
    done
}

UP_STARTED=0
up_fail() {
    trap '' INT TERM   # the teardown is bounded; let it finish
    log "up failed: $*"
    if [ "$UP_STARTED" = 1 ]; then
        print_logs
        log "tearing down what was started"
        cmd_down "$D"
    fi
    remove_policy
    exit 1
}

cmd_up() {
    local dir=$1 t0 t1 pid
    t0=$(now)
    [ "$(id -u)" = 0 ] || die "up needs root"
    case $dir in *[[:space:]]* | *'#'* | *'='*) die "DIR must not contain spaces, '#' or '=' (it goes into slurm.conf): $dir" ;; esac
    mkdir -p "$dir" || die "cannot create $dir"
    set_paths "$(cd "$dir" && pwd -P)"
    [ "$D" != / ] || die "refusing DIR=/"
    local host; host=$(hostname -s) || die "hostname -s failed"
    [ -n "$host" ] || die "empty hostname"
    # Unix socket paths (munge socket, slurmstepd sockets in the spool) are limited to 107 bytes.
    if [ $(( ${#SPOOL} + ${#host} + 24 )) -gt 107 ]; then
        die "DIR path too long for unix sockets under it ($D); use a shorter one"
    fi
    local p
    for p in "$MUNGE_PID:$MUNGE_SOCK" "$CTLD_PID:$CONF" "$SLURMD_PID:$CONF"; do
        if pid=$(pid_from_file "${p%%:*}") && pid_is_ours "$pid" "${p#*:}"; then
            die "a cluster is already running in $D (PID $pid from ${p%%:*}); run: $0 down $D"
        fi
    done

    trap 'up_fail "interrupted"' INT TERM
    trap 'remove_policy' EXIT
    install_missing
    t1=$(now)

    # Fresh private state (only our own sub-folders; anything else in DIR is left alone).
    rm -rf "$MUNGE_DIR" "$STATE" "$SPOOL" "$RUN" "$LOGS" "$CONF" "$ENVSH"
    mkdir -p "$MUNGE_SOCK_DIR" "$STATE" "$SPOOL" "$RUN" "$LOGS" || up_fail "mkdir under $D"
    chmod 755 "$MUNGE_DIR" "$MUNGE_SOCK_DIR" "$STATE" "$SPOOL" "$RUN" "$LOGS"

    # --- munge
    UP_STARTED=1
    mungekey --create --keyfile="$MUNGE_KEY" >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none \
        || up_fail "cannot create the munge key"
    chmod 600 "$MUNGE_KEY"
    # munged refuses a socket whose folders are not all executable by everyone ("Socket is
    # inaccessible"), e.g. under a `mktemp -d` folder (mode 700). Only root uses this cluster,
    # so then run it with --force, which turns that check into a warning.
    local force=() blocker
    if blocker=$(first_untraversable "$MUNGE_SOCK_DIR"); then
        log "note: $blocker is not executable by all; starting munged with --force (root-only use)"
        force=(--force)
    fi
    timeout 20 munged "${force[@]}" --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCK" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_LOG" --seed-file="$MUNGE_SEED" </dev/null >/dev/null 2>"$MUNGE_DIR/munged.err" \
        || { cat "$MUNGE_DIR/munged.err" >&2; up_fail "munged did not start"; }
    local ok=0
    for _ in $(seq 50); do
        if timeout 5 munge -n -S "$MUNGE_SOCK" 2>/dev/null | timeout 5 unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; then
            ok=1; break
        fi
        sleep 0.2
    done
    [ "$ok" = 1 ] || up_fail "munged does not answer on $MUNGE_SOCK"

    # --- slurm.conf
    local ports ctld_port slurmd_port topo cpus boards sockets cores threads mem realmem
    ports=$(pick_free_ports 2) || up_fail "no free TCP ports found"
    read -r ctld_port slurmd_port <<<"$ports"
    topo=$(SLURM_CONF=/dev/null timeout 20 slurmd -C 2>/dev/null | head -n 1)
    field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$topo"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    if [ -z "$cpus" ] || [ -z "$sockets" ] || [ -z "$cores" ] || [ -z "$threads" ] || [ -z "$mem" ]; then
        up_fail "cannot read the node topology from 'slurmd -C': $topo"
    fi
    sockets=$(( ${boards:-1} * sockets ))
    realmem=$(( mem * 9 / 10 )); [ "$realmem" -ge 1 ] || realmem=1

    cat >"$CONF" <<EOF
# Throw-away single-node cluster written by qsweep scripts/slurm/cluster.sh; see README.md there.
ClusterName=qsweep
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: with them 22.05 fails every job inside slurmd yet reports it COMPLETED.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=600
DependencyParameters=kill_invalid_depend
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$realmem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ENVSH" <<EOF
# Source this to talk to the fixture cluster in $D (written by scripts/slurm/cluster.sh).
export SLURM_CONF=$CONF
export QSWEEP_SLURM_DIR=$D
EOF

    # --- daemons
    export SLURM_CONF=$CONF
    timeout 30 slurmctld -f "$CONF" </dev/null >"$LOGS/slurmctld.out" 2>&1 \
        || up_fail "slurmctld exited with $?: $(tail -n 5 "$LOGS/slurmctld.out")"
    timeout 30 slurmd -f "$CONF" -N "$host" </dev/null >"$LOGS/slurmd.out" 2>&1 \
        || up_fail "slurmd exited with $?: $(tail -n 5 "$LOGS/slurmd.out")"

    # Both fork and return 0 even when they fail: poll until the node is idle.
    local deadline=$((SECONDS + UP_TIMEOUT)) grace=$((SECONDS + 5)) pinged=0 state=''
    while :; do
        if [ "$pinged" = 0 ] && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
            pinged=1
        fi
        if [ "$pinged" = 1 ]; then
            state=$(timeout 5 sinfo -h -o %T 2>/dev/null | head -n 1)
            [ "$state" = idle ] && break
        fi
        # A daemon that died is not coming back: fail early (after its pid file had time to appear).
        if [ "$SECONDS" -ge "$grace" ]; then
            pid_from_file "$CTLD_PID" >/dev/null || up_fail "slurmctld is not running"
            pid_from_file "$SLURMD_PID" >/dev/null || up_fail "slurmd is not running"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            up_fail "not ready after ${UP_TIMEOUT} s (ping ok: $pinged, node state: '${state:-?}')"
        fi
        sleep 0.3
    done
    trap - INT TERM
    log "up in $(elapsed "$t0") s (install $(elapsed_between "$t0" "$t1") s, start $(elapsed "$t1") s); ports $ctld_port/$slurmd_port"
    log "use: source $ENVSH"
}

elapsed_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- main

case ${1:-} in
    check) [ $# -eq 1 ] || usage; cmd_check ;;
    up)    [ $# -eq 2 ] || usage; cmd_up "$2" ;;
    down)  [ $# -eq 2 ] || usage; cmd_down "$2" ;;
    *)     usage ;;
esac
