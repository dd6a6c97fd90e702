#!/usr/bin/env bash
# Real systemd test hosts for gpu.mig: Debian 12 containers with systemd as PID 1 (podman + runc), reached over SSH
# on 127.0.0.1. Recipe and flags: research/systemd-hosts-probe.md (variant F). Needs root, podman, runc, mmdebstrap.
#
#   hosts.sh build            image from an mmdebstrap rootfs (tar cached under .cache/, keyed by the package list)
#   hosts.sh up N             start N hosts, write .build/systemd-hosts/inventory.yml
#   hosts.sh down             remove the hosts
#   hosts.sh clean-host       undo the host-side network state podman/CNI left (bridge, iptables, netns, ip_forward)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${GPU_MIG_HOSTS_CACHE:-$repo/.cache/systemd-hosts}
work=${GPU_MIG_HOSTS_WORK:-$repo/.build/systemd-hosts}
prefix=${GPU_MIG_HOSTS_PREFIX:-gpu-mig-h}
port0=${GPU_MIG_HOSTS_PORT0:-22610}
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,python3-yaml,openssh-server,sudo,iproute2,procps
key=$(printf '%s\n' "$suite" "$packages" "recipe-1" | sha256sum | cut -c1-12)
image=localhost/gpu-mig-systemd-host:$key
podman_run=(podman --runtime runc)

log() { printf '[hosts.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

mirror_lines() {
  # The deb lines of this machine's apt sources (deb822 or one-line), so mmdebstrap uses the same mirror.
  python3 - <<'PY'
import glob, re
lines = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for block in open(path).read().split("\n\n"):
        f = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, re.M))
        if f.get("Types", "").split()[:1] == ["deb"] and "debian" in f.get("URIs", ""):
            for suite in f["Suites"].split():
                lines.append(f"deb {f['URIs'].split()[0]} {suite} {f.get('Components', 'main')}")
for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
    try:
        lines += [l.strip() for l in open(path) if l.startswith("deb ")]
    except OSError:
        pass
print("\n".join(dict.fromkeys(l for l in lines if " bookworm" in l)))
PY
}

cmd_build() {
  mkdir -p "$cache"
  [ -f "$cache/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C gpu-mig-test -f "$cache/id_ed25519"
  if podman image exists "$image"; then log "image $image present"; return; fi
  local tar="$cache/rootfs-$key.tar"
  if [ ! -s "$tar" ]; then
    log "mmdebstrap $suite ($packages)"
    mapfile -t mirrors < <(mirror_lines)
    mmdebstrap --mode=root --variant=apt --format=tar --include="$packages" \
      --customize-hook="install -d -m700 \"\$1/root/.ssh\" && install -m600 $cache/id_ed25519.pub \"\$1/root/.ssh/authorized_keys\"" \
      --customize-hook='chroot "$1" systemctl mask getty.target getty@tty1.service console-getty.service serial-getty@ttyS0.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount systemd-sysctl.service' \
      --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*key* && chroot "$1" ssh-keygen -A' \
      "$suite" "$tar.part" "${mirrors[@]}" </dev/null
    mv "$tar.part" "$tar"
  fi
  log "podman import $tar"
  podman import --change 'CMD=["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' "$tar" "$image" >/dev/null
}

cmd_up() {
  local count=${1:-3} i name
  mkdir -p "$work"
  [ -f "$work/ip_forward.orig" ] || cat /proc/sys/net/ipv4/ip_forward > "$work/ip_forward.orig"
  for i in $(seq 1 "$count"); do
    name=$prefix$i
    podman rm -f -t 5 "$name" >/dev/null 2>&1 || true
    "${podman_run[@]}" run -d --name "$name" --hostname "$name" -p "127.0.0.1:$((port0 + i)):22" \
      --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
      --privileged --cgroupns=private --systemd=false \
      --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -e container=podman \
      --stop-signal SIGRTMIN+3 --restart=always "$image" /sbin/init >/dev/null
  done
  for i in $(seq 1 "$count"); do
    name=$prefix$i
    for _ in $(seq 1 100); do
      state=$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)
      case $state in running|degraded) break ;; esac
      sleep 0.3
    done
    log "$name: ${state:-not up}"
    [ "$state" = degraded ] && podman exec "$name" systemctl --failed --no-legend >&2 || true
  done
  {
    echo "# written by hacking/systemd-hosts/hosts.sh up $count"
    echo "all:"
    echo "  children:"
    echo "    systemd_gpu_hosts:"
    echo "      hosts:"
    for i in $(seq 1 "$count"); do
      echo "        $prefix$i: {ansible_host: 127.0.0.1, ansible_port: $((port0 + i))}"
    done
    echo "      vars:"
    echo "        ansible_connection: ssh"
    echo "        ansible_user: root"
    echo "        ansible_ssh_private_key_file: $cache/id_ed25519"
    echo "        ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    echo "        ansible_python_interpreter: /usr/bin/python3"
  } > "$work/inventory.yml"
  log "inventory: $work/inventory.yml"
}

cmd_down() {
  local names
  names=$(podman ps -a --format '{{.Names}}' | grep "^$prefix[0-9]*$" || true)
  [ -z "$names" ] || podman rm -f -t 10 $names >/dev/null
  log "removed: ${names:-none}"
}

cmd_clean_host() {
  cmd_down
  # Leave the network state as it was before the first host: only when no other container is running.
  if [ -n "$(podman ps -q)" ]; then log "other containers are running; network state left alone"; return; fi
  podman network reload --all >/dev/null 2>&1 || true
  ip link del cni-podman0 2>/dev/null || true
  for chain in $(iptables -S 2>/dev/null | awk '/^-N CNI-/{print $2}'); do
    iptables -F "$chain" 2>/dev/null || true
  done
  iptables -S FORWARD 2>/dev/null | grep -E 'CNI-' | sed 's/^-A/-D/' | while read -r rule; do iptables $rule || true; done
  iptables -t nat -S POSTROUTING 2>/dev/null | grep -E 'CNI-' | sed 's/^-A/-D/' | while read -r rule; do iptables -t nat $rule || true; done
  for table in filter nat; do
    for chain in $(iptables -t $table -S 2>/dev/null | awk '/^-N CNI-/{print $2}'); do
      iptables -t $table -F "$chain" 2>/dev/null || true
      iptables -t $table -X "$chain" 2>/dev/null || true
    done
  done
  mountpoint -q /run/netns && umount /run/netns 2>/dev/null || true
  rm -rf /var/lib/cni/networks /var/lib/cni/results
  if [ -f "$work/ip_forward.orig" ]; then
    cat "$work/ip_forward.orig" > /proc/sys/net/ipv4/ip_forward
    rm -f "$work/ip_forward.orig"
  fi
  log "host network state restored"
}

case ${1:-} in
  build) cmd_build ;;
  up) shift; cmd_build; cmd_up "$@" ;;
  down) cmd_down ;;
  clean-host) cmd_clean_host ;;
  *) echo "usage: $0 build | up N | down | clean-host" >&2; exit 2 ;;
esac
