#!/usr/bin/env bash
# Test setup of one systemd host (prepare.yml), the way a real host gets its driver: simulated GPUs behind NVML,
# NVIDIA device nodes, the test units pinned to the slots. Roles and playbooks never see any of this.
#
#   setup_host.sh SRC WHEEL HOSTNAME SLOTS GPU...
#     SRC       the repository as mounted in the host (hacking/systemd-hosts/hosts.sh)
#     WHEEL     file name of the nvidia-ml-py wheel in /opt/wheels (mounted read-only from the controller's cache)
#     SLOTS     the host's slot names, comma-separated (one slot-service@<slot> unit each)
#     GPU...    simulated GPU models (migsim host --gpu)
#
# Idempotent: prints "changed" when it changed anything.
set -euo pipefail
src=$1 wheel=$2 name=$3 slots=$4
shift 4
changed=0

put() { # put PATH MODE: stdin to PATH when different
  local path=$1 mode=$2 text
  text=$(cat)
  if [ ! -f "$path" ] || [ "$(cat "$path")" != "$text" ]; then
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$text" > "$path"
    chmod "$mode" "$path"
    changed=1
  fi
}

# pip installs from the wheelhouse only: the preflight role's own pip install of nvidia-ml-py runs for real, offline.
put /etc/pip.conf 0644 <<EOF
[global]
no-index = true
find-links = /opt/wheels
disable-pip-version-check = true
EOF

# Every Python on the host loads the simulated NVML (MIGSIM_ROOT=/: state in /var/lib/migsim, volatile state in
# /run/migsim, a tmpfs that a reboot clears). The simulator's own tools run with the wheel on PYTHONPATH.
put /usr/lib/python3/dist-packages/zz-migsim.pth 0644 <<EOF
import os, runpy; os.environ.setdefault("MIGSIM_ROOT", "/"); runpy.run_path("$src/tests/simulator/boot/sitecustomize.py")
EOF
for tool in migsim:nvmlsim.cli nvidia-smi:nvmlsim.smi; do
  put "/usr/bin/${tool%%:*}" 0755 <<EOF
#!/bin/sh
PYTHONPATH=/opt/wheels/$wheel exec /usr/bin/python3 -m ${tool#*:} "\$@"
EOF
done

if [ ! -f /var/lib/migsim/host.json ]; then
  args=()
  for gpu in "$@"; do args+=("--gpu=$gpu"); done
  /usr/bin/migsim host / --hostname "$name" "${args[@]}" > /dev/null
  changed=1
fi

# Device nodes as the driver makes them (/dev/nvidiactl, /dev/nvidia<N>, /dev/nvidia-uvm, and the MIG capability
# nodes /dev/nvidia-caps/nvidia-cap<M>, M as in /proc/driver/nvidia-caps/mig-minors for GPU 0), so that systemd
# resolves the services' DeviceAllow= into the devices cgroup. They live in the container's own /dev (a tmpfs,
# recreated at every boot by systemd-tmpfiles); no driver backs them. uvm and caps take a major that is free here.
major=
for candidate in $(seq 254 -1 240); do
  if ! awk -v m="$candidate" '$1 == m { found = 1 } END { exit !found }' /proc/devices; then
    major=$candidate
    break
  fi
done
[ -n "$major" ] || { echo "no free character major in 240-254" >&2; exit 1; }
{
  echo "c /dev/nvidiactl 0666 root root - 195:255"
  echo "c /dev/nvidia0 0666 root root - 195:0"
  echo "c /dev/nvidia-uvm 0666 root root - $major:0"
  echo "d /dev/nvidia-caps 0755 root root -"
  for minor in $(seq 1 137); do echo "c /dev/nvidia-caps/nvidia-cap$minor 0444 root root - $major:$minor"; done
} | put /etc/tmpfiles.d/gpu-mig-test-nvidia.conf 0644
[ -c /dev/nvidia-caps/nvidia-cap137 ] || systemd-tmpfiles --create /etc/tmpfiles.d/gpu-mig-test-nvidia.conf

# The synthetic server, where the services' users can read it.
mkdir -p /opt/gpu-mig-test
if ! cmp -s "$src/tests/servers/synthetic_server.py" /opt/gpu-mig-test/synthetic_server.py; then
  install -m 0644 "$src/tests/servers/synthetic_server.py" /opt/gpu-mig-test/
  changed=1
fi

# A test unit per slot that records the MIG device it was started with.
put /etc/systemd/system/slot-service@.service 0644 <<'EOF'
[Unit]
Description=Test service pinned to MIG slot %i
Requires=gpu-mig.target
After=gpu-mig.target

[Service]
EnvironmentFile=/run/gpu-mig/slots/%i.env
ExecStart=/bin/sh -c 'echo "$CUDA_VISIBLE_DEVICES" > /run/slot-service-%i.uuid; exec sleep infinity'

[Install]
WantedBy=multi-user.target
EOF
units=()
for slot in ${slots//,/ }; do
  systemctl is-enabled --quiet "slot-service@$slot.service" 2> /dev/null || units+=("slot-service@$slot.service")
done
if ((${#units[@]})); then
  systemctl daemon-reload
  systemctl enable --quiet "${units[@]}"
  changed=1
fi

((changed)) && echo changed || echo unchanged
