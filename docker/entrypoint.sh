#!/bin/sh
# The image's entrypoint: threads follow the container's CPU limit, then the command runs.
#
# torch and OpenMP start one thread per core they see, and a container sees every core of its node:
# under a 2-CPU limit on a 64-core node that is 64 threads sharing 2 CPUs of quota, mostly waiting to
# be scheduled. The limit is read from cgroup v2 (cpu.max) or v1 (the CFS quota), rounded up, and set
# as OMP_NUM_THREADS, MKL_NUM_THREADS and LODESTAR_TORCH_THREADS unless they are set already (the
# Helm chart sets them from the pod's limit). No limit: nothing is set.
set -eu

cgroup="${CPU_CGROUP_DIR:-/sys/fs/cgroup}"
quota=""
period=""
if [ -r "$cgroup/cpu.max" ]; then
    read -r quota period < "$cgroup/cpu.max"
elif [ -r "$cgroup/cpu/cpu.cfs_quota_us" ] && [ -r "$cgroup/cpu/cpu.cfs_period_us" ]; then
    quota=$(cat "$cgroup/cpu/cpu.cfs_quota_us")
    period=$(cat "$cgroup/cpu/cpu.cfs_period_us")
fi

case "$quota" in
    "" | max | -*) ;;
    *)
        if [ "${period:-0}" -gt 0 ] && [ "$quota" -gt 0 ]; then
            cpus=$(((quota + period - 1) / period))
            export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}"
            export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$cpus}"
            export LODESTAR_TORCH_THREADS="${LODESTAR_TORCH_THREADS:-$cpus}"
        fi
        ;;
esac

exec "$@"
