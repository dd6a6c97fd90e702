#!/usr/bin/env bash
# gpu.mig.mig_facts on simulated hosts: MIG on with instances and a process (a100), no MIG (l4), no driver (nodriver).
set -eux
source ../setup_migsim/fleet.sh a100,l4,nodriver
ansible-playbook -i "$MIGSIM_INVENTORY" mig_facts.yml "$@"
