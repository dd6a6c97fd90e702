# shellcheck shell=bash
# Sourced by a target's runme.sh with a migsim fleet mix such as "a100,l4": one simulated host per kind
# (tests/simulator/nvmlsim/cli.py FLEET_KINDS) under OUTPUT_DIR, reached through its inventory's interpreter wrapper.
# Exports MIGSIM (the command, for the playbooks) and MIGSIM_INVENTORY; the fleet's processes die on exit.
MIGSIM=${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/gpu/mig/tests/simulator/migsim
# The simulator and the hosts' modules run on ansible-test's Python, which has nvidia-ml-py.
MIGSIM_PYTHON=$(python -c 'import sys; print(sys.executable)')
export MIGSIM MIGSIM_PYTHON
fleet=$OUTPUT_DIR/fleet
IFS=, read -ra kinds <<<"$1"
"$MIGSIM" fleet --dir "$fleet" --force --mix "$1" --hosts "${#kinds[@]}"
trap '"$MIGSIM" stop "$fleet"' EXIT
export MIGSIM_INVENTORY=$fleet/inventory.yml
