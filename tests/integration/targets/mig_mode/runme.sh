#!/usr/bin/env bash
# gpu.mig.mig_mode on simulated hosts: Hopper switching at once (h100), Ampere waiting for a reset while a process
# holds the GPU (a100busy), a GPU without MIG (l4).
set -eux
source ../setup_migsim/fleet.sh h100,a100busy,l4
ansible-playbook -i "$MIGSIM_INVENTORY" mig_mode.yml "$@"
