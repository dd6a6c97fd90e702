#!/usr/bin/env bash
# gpu.mig.mig_instances on a simulated host: 2 x A100-40GB with MIG on; GPU 0 holds a 4g.20gb that a process uses and
# a 2g.10gb, GPU 1 is empty.
set -eux
source ../setup_migsim/fleet.sh a100
ansible-playbook -i "$MIGSIM_INVENTORY" mig_instances.yml "$@"
