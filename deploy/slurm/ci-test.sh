#!/usr/bin/env bash
# A real single-node Slurm, end to end (called by .ci/run).
#
# Installs Debian's Slurm and munge if missing, writes a single-node
# slurm.conf for this machine (proctrack/linuxproc, task/none: no cgroups),
# starts munged, slurmctld and slurmd, then:
#   1. submits deploy/slurm/gradsweep.sbatch for a small sweep (1 worker);
#   2. scales up mid-sweep with deploy/slurm/workers.sbatch (2 workers) and
#      waits until the new worker holds a run;
#   3. scales down with scancel: that worker hands its run back and leaves;
#   4. waits for the batch job, and checks that it exited 0 and that the
#      results are complete: every run exactly once, none failed;
# and tears everything down. Anything that does not work — including a
# machine where slurmd cannot run — fails loudly; nothing is skipped.
#
# usage: deploy/slurm/ci-test.sh [BIN_DIR]   (default: target/debug)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="$(cd "${1:-$root/target/debug}" && pwd)"
say() { printf 'slurm-test: %s\n' "$*"; }
fail() {
  printf 'slurm-test: FAIL: %s\n' "$*" >&2
  for f in "${scratch:-/nonexistent}"/{slurmctld.log,slurmd.log,gs/coordinator.log,*.out}; do
    [[ -f "$f" ]] && { printf -- '--- %s (last 30 lines)\n' "$f" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}
for b in gradsweep gradsweep-worker; do
  [[ -x "$bin_dir/$b" ]] || fail "$bin_dir/$b is missing: build first (cargo build --workspace --bins)"
done

# --- install -----------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  [[ "$(id -u)" == 0 ]] || fail "Slurm is not installed and this is not root, so it cannot be installed here"
  say "installing slurmctld slurmd slurm-client munge"
  apt-get update -qq >/dev/null || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null 2>&1 || fail "apt-get install of Slurm and munge failed"
fi
[[ "$(id -u)" == 0 ]] || fail "this test runs slurmd, which needs root"

scratch="$(mktemp -d /tmp/gradsweep-slurm.XXXXXX)"
started_munged=""
pids=()
teardown() {
  set +e
  if command -v scancel >/dev/null && [[ -n "${SLURM_CONF:-}" ]]; then scancel --quiet --user="$(id -un)" 2>/dev/null; fi
  sleep 1
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  if [[ -n "$started_munged" && -s /run/munge/munged.pid ]]; then kill -TERM "$(cat /run/munge/munged.pid)" 2>/dev/null; fi
  pkill -f "$scratch" 2>/dev/null
  rm -rf "$scratch"
}
trap teardown EXIT

# --- munge -------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [[ -s /etc/munge/munge.key ]] || mungekey --create >/dev/null 2>&1 || fail "cannot create the munge key"
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
  started_munged=1
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge)"
fi

# --- slurm.conf for this machine ------------------------------------------------
host="$(hostname -s)"
cpus="$(nproc)"
mem_mib="$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)"
(( cpus >= 2 )) || fail "needs 2 CPUs to run 2 workers at once; this machine has $cpus"
mkdir -p "$scratch/state" "$scratch/spool" "$scratch/gs"
cat > "$scratch/slurm.conf" <<CONF
ClusterName=gradsweep-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/slurmctld.log
SlurmdLogFile=$scratch/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mib State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$scratch/slurm.conf"

say "starting slurmctld and slurmd ($host, $cpus CPUs)"
slurmctld -D -f "$SLURM_CONF" >"$scratch/slurmctld.stderr" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$scratch/slurmd.stderr" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
  [[ "$state" == idle ]] && break
  sleep 0.1
done
[[ "${state:-}" == idle ]] || {
  cat "$scratch/slurmctld.stderr" "$scratch/slurmd.stderr" >&2
  fail "the node did not become idle (state: '${state:-none}'): slurmctld/slurmd cannot run on this machine"
}

# --- the sweep -----------------------------------------------------------------
cat > "$scratch/grid.toml" <<'GRID'
[sweep]
name = "slurm-ci"
seeds = [0, 1, 2]
[train]
model = "mlp:64-32-10"
dataset = "digits"
epochs = 12
[probe]
every_epochs = 4
sketch_rank = 32
[grid]
lr = [0.05, 0.1]
batch_size = [8, 32]
GRID
runs=12
export GRADSWEEP_BIN_DIR="$bin_dir" GRADSWEEP_STATE_DIR="$scratch/gs" GRADSWEEP_IDLE_EXIT_SECS=30
main_job="$(sbatch --parsable --chdir="$scratch" --ntasks=1 --cpus-per-task=1 \
  "$root/deploy/slurm/gradsweep.sbatch" "$scratch/grid.toml")" || fail "sbatch of gradsweep.sbatch failed"
say "submitted gradsweep.sbatch as job $main_job"

for _ in $(seq 600); do [[ -s "$scratch/gs/coordinator.addr" ]] && break; sleep 0.1; done
[[ -s "$scratch/gs/coordinator.addr" ]] || fail "the batch job did not start a coordinator"
export GRADSWEEP_COORDINATOR="$(cat "$scratch/gs/coordinator.addr")" GRADSWEEP_TOKEN_FILE="$scratch/gs/token"
gs() { "$bin_dir/gradsweep" "$@"; }
workers_line() { gs workers 2>/dev/null | grep -F "$1" || true; }

# Scale up: a second worker joins through its own job.
add_job="$(sbatch --parsable --chdir="$scratch" --ntasks=1 --cpus-per-task=1 \
  "$root/deploy/slurm/workers.sbatch")" || fail "sbatch of workers.sbatch failed"
say "scaling up: workers.sbatch is job $add_job"
for _ in $(seq 1200); do
  line="$(workers_line "slurm-$add_job-0")"
  [[ "$line" == *active* && "$line" == */c* ]] && break
  sleep 0.1
done
[[ "${line:-}" == *active* && "$line" == */c* ]] || fail "the added worker never held a run: '${line:-}'"
active="$(gs workers | grep -c ' active ' || true)"
(( active == 2 )) || fail "expected 2 active workers after scaling up, saw $active"
done_before="$(gs status | awk '{print $3}' | cut -d/ -f1)"
(( done_before < runs )) || fail "the sweep finished before scaling (make it longer)"
say "2 workers active, $done_before/$runs runs done; scaling down"

# Scale down: scancel the added worker; it hands its run back and leaves.
scancel "$add_job"
for _ in $(seq 300); do
  line="$(workers_line "slurm-$add_job-0")"
  [[ "$line" == *left* ]] && break
  sleep 0.1
done
[[ "${line:-}" == *left* ]] || fail "the cancelled worker did not leave cleanly: '${line:-}'"
grep -q "leases handed back" "$scratch/gradsweep-workers-$add_job.out" \
  || fail "the cancelled worker did not hand its leases back (see its output)"

# The batch job finishes the sweep with the remaining worker.
for _ in $(seq 3000); do
  squeue -h -j "$main_job" 2>/dev/null | grep -q . || break
  sleep 0.2
done
squeue -h -j "$main_job" 2>/dev/null | grep -q . && fail "the batch job did not finish within 10 minutes"
job_info="$(scontrol show job "$main_job")"
grep -q "JobState=COMPLETED" <<<"$job_info" && grep -q "ExitCode=0:0" <<<"$job_info" \
  || fail "the batch job did not complete cleanly: $(grep -o 'JobState=[A-Z]* .*ExitCode=[0-9:]*' <<<"$job_info")"

# Results: every run once, none failed, files written. The coordinator the
# job started is gone; its database holds the sweep.
json="$(ls "$scratch"/gs/results-*/results.json 2>/dev/null | head -n1)"
[[ -s "$json" ]] || fail "no results.json was written"
seen="$(grep -o '"run_id"' "$json" | wc -l)"
(( seen == runs )) || fail "results.json holds $seen runs, expected $runs"
grep -q "results in" "$scratch/gradsweep-$main_job.out" || fail "the batch job did not report its results"
cells="$(($(wc -l < "$(dirname "$json")/results.csv") - 1))"
(( cells == 4 )) || fail "results.csv has $cells cells, expected 4"
distinct="$(grep -o '"run_id": *"[^"]*"' "$json" | sort -u | wc -l)"
(( distinct == runs )) || fail "results.json has duplicate runs ($distinct distinct of $seen)"

say "PASS: job $main_job ran $runs/$runs runs once each across 4 cells; workers scaled 1 -> 2 -> 1 (job $add_job cancelled mid-sweep, its run handed back)"
