#!/usr/bin/env bash
# Install the SLURM and munge binaries that tests/helpers/slurm_cluster.py runs as a real two-node
# cluster on this machine (Debian/Ubuntu; SLURM 22.05 on Debian 12). Idempotent: does nothing
# when every binary is already there. Starts no daemon (the test fixture starts its own).
set -euo pipefail

PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)
BINARIES=(sbatch srun squeue scontrol scancel slurmctld slurmd munged mungekey)

missing=()
for binary in "${BINARIES[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing+=("$binary")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
echo "install-slurm: missing ${missing[*]}; installing ${PACKAGES[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An out-of-date package index is the usual reason for a failed install: update once and retry.
$SUDO apt-get install -y -q "${PACKAGES[@]}" ||
    { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${PACKAGES[@]}"; }
