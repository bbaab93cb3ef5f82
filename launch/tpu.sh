#!/usr/bin/env bash
# Cloud TPU VMs for refine_jax: create a slice, install the project on every worker, run the main
# job on all workers at once, keep it running through spot preemptions, delete the slice.
#
#   launch/tpu.sh [options] create|setup|run|keep-running|ssh|status|delete [-- ARGS...]
#
# Options (or the environment variable in brackets):
#   --name NAME              TPU name [TPU_NAME]                     (required)
#   --zone ZONE              zone [TPU_ZONE]                          (required)
#   --project PROJECT        project [TPU_PROJECT]; default: gcloud's configured project
#   --accelerator-type TYPE  e.g. v4-8, v5litepod-16 [TPU_TYPE]      (default v4-8)
#   --version VERSION        TPU VM runtime [TPU_RUNTIME]             (default tpu-ubuntu2204-base)
#   --spot                   a spot VM (cheaper, can be preempted) [TPU_SPOT=1]
#   --source DIR             the project to install (default: this checkout)
#   --max-restarts N         keep-running: give up after N preemptions (default 20)
#   --dry-run                print the gcloud commands instead of running them
#
# Commands:
#   create        create the TPU VM slice
#   setup         copy the project to every worker, make a venv, install it with jax[tpu]
#   run -- ARGS   python -m refine_jax.main ARGS on every worker at once (JAX finds the other
#                 workers itself; give a gs:// --workdir so every worker sees the same files)
#   keep-running -- ARGS
#                 run, and after a preemption re-create, set up and run again; the train stage
#                 resumes from the last checkpoint in the workdir
#   ssh [-- CMD]  a shell on worker 0, or CMD on every worker
#   status        the slice's state (READY, PREEMPTED, ...)
#   delete        delete the slice
set -euo pipefail

name="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${TPU_PROJECT:-}"
accel="${TPU_TYPE:-v4-8}"
runtime="${TPU_RUNTIME:-tpu-ubuntu2204-base}"
spot="${TPU_SPOT:-0}"
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
max_restarts=20
dry_run=0
remote_dir="refine_jax"

die() { echo "launch/tpu.sh: $*" >&2; exit 2; }

# One shell word, single-quoted when it needs to be.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# Print a command so it can be pasted back into a shell; run it unless --dry-run.
cmd() {
  local out="" a
  for a in "$@"; do out+="$(quote "$a") "; done
  printf '%s\n' "${out% }"
  if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

command_name=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator-type) accel="$2"; shift 2 ;;
    --version) runtime="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --source) source_dir="$2"; shift 2 ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    create|setup|run|keep-running|ssh|status|delete)
      [ -z "$command_name" ] || die "one command at a time (got $command_name and $1)"
      command_name="$1"; shift ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$command_name" ] || die "no command given: create, setup, run, keep-running, ssh, status or delete"
[ -n "$name" ] || die "--name (or TPU_NAME) is required"
[ -n "$zone" ] || die "--zone (or TPU_ZONE) is required"

where=(--zone="$zone")
if [ -n "$project" ]; then where+=(--project="$project"); fi

create() {
  local args=(gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accel"
              --version="$runtime")
  if [ "$spot" = "1" ]; then args+=(--spot); fi
  cmd "${args[@]}"
}

on_all_workers() {
  cmd gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

setup() {
  local tarball="/tmp/refine_jax-$name.tar.gz"
  # the working tree as committed, without venvs, caches or run outputs
  cmd git -C "$source_dir" archive --format=tar.gz --prefix="$remote_dir/" -o "$tarball" HEAD
  cmd gcloud compute tpus tpu-vm scp "$tarball" "$name:refine_jax.tar.gz" "${where[@]}" --worker=all
  on_all_workers "rm -rf $remote_dir && tar xzf refine_jax.tar.gz && cd $remote_dir && python3 -m venv venv && venv/bin/pip install -q -U pip && venv/bin/pip install -q -e . 'jax[tpu]'"
}

run() {
  local quoted="" a
  for a in "${extra[@]}"; do quoted+="$(quote "$a") "; done
  on_all_workers "cd $remote_dir && venv/bin/python -m refine_jax.main ${quoted% }"
}

state() {
  gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || echo MISSING
}

keep_running() {
  local restarts=0
  while true; do
    if [ "$dry_run" -eq 1 ]; then
      run
      echo "# after a preemption (state PREEMPTED, TERMINATED or MISSING), up to $max_restarts times:"
      cmd gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
      create
      setup
      run
      return 0
    fi
    if run; then return 0; fi
    local s
    s="$(state)"
    case "$s" in
      PREEMPTED|MISSING|TERMINATED) ;;
      *) echo "launch/tpu.sh: the run failed and $name is $s, not preempted; not restarting" >&2; return 1 ;;
    esac
    restarts=$((restarts + 1))
    [ "$restarts" -le "$max_restarts" ] || die "gave up after $max_restarts preemptions"
    echo "launch/tpu.sh: $name is $s; re-creating it (restart $restarts of $max_restarts)" >&2
    if [ "$s" != "MISSING" ]; then cmd gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet; fi
    until create; do sleep 60; done
    setup
  done
}

case "$command_name" in
  create) create ;;
  setup) setup ;;
  run) [ ${#extra[@]} -gt 0 ] || die "run needs the main job's arguments after --"; run ;;
  keep-running) [ ${#extra[@]} -gt 0 ] || die "keep-running needs the main job's arguments after --"; keep_running ;;
  ssh)
    if [ ${#extra[@]} -gt 0 ]; then on_all_workers "${extra[*]}"
    else cmd gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=0; fi ;;
  status) cmd gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' ;;
  delete) cmd gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet ;;
esac
