#!/usr/bin/env bash
# Real systemd test hosts for gpu.mig: Debian 12 containers with systemd as PID 1 (podman + runc), reached over SSH
# on 127.0.0.1 published ports. Recipe and flags: /work/shared/research/systemd-hosts-probe.md (variant F).
# Needs root and the Debian packages podman, runc, mmdebstrap (containernetworking-plugins, iptables come with them).
#
#   hosts.sh build        podman image from an mmdebstrap rootfs; the tar is cached under $cache, keyed by the package
#                         list and the recipe, so a machine builds it once (~1 min) and later runs only import it
#   hosts.sh up N         start N hosts (at most 9; hosts of an earlier run are removed first), write
#                         $work/inventory.yml and an SSH key. Each host gets, read-only: the run's public key as root's
#                         authorized_keys, this repository at $src_mount (test setup: simulator, test servers) and
#                         the wheelhouse $cache/wheels at /opt/wheels
#   hosts.sh down         remove the hosts
#   hosts.sh clean-host   down, then undo the host-side state podman/CNI/the hosts' systemd left: CNI bridge, CNI
#                         iptables chains and rules, /run/netns mount, CNI IPAM files, ip_forward and the cgroup2
#                         nsdelegate option (both only when `up` recorded they were different before)
#
# Environment: GPU_MIG_HOSTS_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/gpu-mig/systemd-hosts),
# GPU_MIG_HOSTS_WORK (default <repo>/.build/systemd-hosts), GPU_MIG_HOSTS_PREFIX, GPU_MIG_HOSTS_PORT0.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${GPU_MIG_HOSTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-mig/systemd-hosts}
work=${GPU_MIG_HOSTS_WORK:-$repo/.build/systemd-hosts}
prefix=${GPU_MIG_HOSTS_PREFIX:-gpu-mig-h}
port0=${GPU_MIG_HOSTS_PORT0:-22610}
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,python3-yaml,openssh-server,iproute2,procps,haproxy
masked="getty.target getty@tty1.service console-getty.service serial-getty@ttyS0.service systemd-binfmt.service"
masked="$masked proc-sys-fs-binfmt_misc.automount systemd-sysctl.service systemd-modules-load.service"
masked="$masked systemd-udevd.service systemd-udev-trigger.service systemd-hwdb-update.service apt-daily.timer"
masked="$masked apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer"
recipe=2 # bump when the customize hooks below change
key=$(printf '%s\n' "$suite" "$packages" "$masked" "recipe-$recipe" | sha256sum | cut -c1-12)
image=localhost/gpu-mig-systemd-host:$key
# The repository inside the hosts, at a path that ends like an installed collection (the simulator's boot hook then
# finds the collection's catalog two levels up).
src_mount=/opt/gpu-mig-src/ansible_collections/gpu/mig
state=$work/host-state

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
  if podman image exists "$image"; then log "image $image present"; return; fi
  mkdir -p "$cache"
  local tar="$cache/$key.tar"
  if [ ! -s "$tar" ]; then
    log "mmdebstrap $suite ($packages) -> $tar"
    local mirrors
    mapfile -t mirrors < <(mirror_lines)
    [ "${#mirrors[@]}" -gt 0 ] || { log "no bookworm deb line in /etc/apt/sources*"; exit 1; }
    # No SSH key in the image: `up` bind-mounts the run's public key. Host keys are made once per image.
    # shellcheck disable=SC2016 # the hooks' $1 is mmdebstrap's, expanded by its shell
    timeout 600 mmdebstrap --mode=root --variant=apt --format=tar --include="$packages" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook='install -d -m700 "$1/root/.ssh"' \
      --customize-hook="chroot \"\$1\" systemctl mask $masked" \
      --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*key* && chroot "$1" ssh-keygen -A' \
      --customize-hook='printf "UseDNS no\nPermitRootLogin prohibit-password\n" > "$1/etc/ssh/sshd_config.d/gpu-mig-test.conf"' \
      --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*_Packages' \
      "$suite" "$tar.part" "${mirrors[@]}" </dev/null
    mv "$tar.part" "$tar"
    # Root filesystems of earlier recipes are useless now.
    find "$cache" -maxdepth 1 -name '*.tar' ! -name "$key.tar" -delete
  fi
  log "podman import $tar"
  podman import --change 'CMD=["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' "$tar" "$image" >/dev/null
  # Older images of this recipe are useless now.
  podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/gpu-mig-systemd-host:' | grep -v ":$key\$" |
    xargs -r podman rmi >/dev/null 2>&1 || true
}

record_host_state() {
  # What `clean-host` must give back: written once, before the first host of a run exists.
  [ -f "$state" ] && return
  {
    echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
    echo "nsdelegate=$(findmnt -n -o OPTIONS /sys/fs/cgroup/unified 2>/dev/null | grep -c nsdelegate || true)"
    echo "netns_mounted=$(mountpoint -q /run/netns && echo 1 || echo 0)"
  } > "$state"
}

cmd_up() {
  local count=${1:-3} i name st
  [[ $count =~ ^[1-9]$ ]] || { log "up: 1 to 9 hosts"; exit 2; }
  mkdir -p "$work" "$cache/wheels"
  cmd_down
  record_host_state
  [ -f "$work/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C gpu-mig-test -f "$work/id_ed25519"
  for i in $(seq 1 "$count"); do
    name=$prefix$i
    podman --runtime runc run -d --name "$name" --hostname "$name" -p "127.0.0.1:$((port0 + i)):22" \
      --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
      --privileged --cgroupns=private --systemd=false \
      --tmpfs /run --tmpfs /run/lock --tmpfs /tmp -e container=podman \
      -v "$work/id_ed25519.pub:/root/.ssh/authorized_keys:ro" \
      -v "$repo:$src_mount:ro" -v "$cache/wheels:/opt/wheels:ro" \
      --stop-signal SIGRTMIN+3 --restart=always "$image" /sbin/init >/dev/null
  done
  for i in $(seq 1 "$count"); do
    name=$prefix$i
    st=
    for _ in $(seq 1 100); do # at most ~30 s per host
      st=$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)
      case $st in running | degraded) break ;; esac
      sleep 0.3
    done
    log "$name: ${st:-not up}"
    case $st in
      running) ;;
      degraded) podman exec "$name" systemctl --failed --no-legend >&2 || true ;;
      *) exit 1 ;;
    esac
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
    echo "        ansible_ssh_private_key_file: $work/id_ed25519"
    echo "        ansible_ssh_args: -o ControlMaster=auto -o ControlPersist=120s  # no -C: loopback"
    echo "        ansible_ssh_common_args: >-"
    echo "          -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    echo "          -o ControlMaster=auto -o ControlPersist=120s -o ControlPath=$work/ssh-%C"
    echo "        ansible_python_interpreter: /usr/bin/python3"
    echo "        systemd_hosts_cache: $cache"
    echo "        systemd_hosts_src: $src_mount"
  } > "$work/inventory.yml"
  log "inventory: $work/inventory.yml"
}

cmd_down() {
  local names
  names=$(podman ps -a --format '{{.Names}}' | grep -E "^${prefix}[0-9]+\$" || true)
  # Killed at once (-t 0): the hosts are throwaway, a clean shutdown of their systemd only costs time.
  # shellcheck disable=SC2086 # one word per container name
  [ -z "$names" ] || podman rm -f -t 0 $names >/dev/null
  rm -f "$work"/ssh-*
  log "removed: ${names:-none}"
}

delete_cni_iptables() {
  # Every rule that jumps to or lives in a CNI-* chain, then the chains; iptables-restore keeps the quoting of
  # comments ("CNI portfwd requiring masquerade") that a shell loop would split.
  local table rules
  for table in filter nat mangle; do
    rules=$(iptables-save -t "$table" 2>/dev/null | awk '
      /^-A CNI-/ { next }
      /^-A / && / -j CNI-/ { sub(/^-A/, "-D"); print; next }
      /^:CNI-/ { chains[++n] = substr($1, 2) }
      END { for (i = 1; i <= n; i++) print "-F " chains[i]; for (i = 1; i <= n; i++) print "-X " chains[i] }')
    [ -n "$rules" ] || continue
    printf '*%s\n%s\nCOMMIT\n' "$table" "$rules" | iptables-restore --noflush || log "iptables $table: some CNI rules left"
  done
}

clear_nsdelegate() {
  # The hosts' systemd remounts the shared cgroup2 superblock with nsdelegate; `mount -o remount` cannot drop it,
  # a raw mount(2) remount with empty data can.
  python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT = 32
if libc.mount(b"none", b"/sys/fs/cgroup/unified", None, MS_REMOUNT, b"") != 0:
    raise SystemExit(f"remount /sys/fs/cgroup/unified: {os.strerror(ctypes.get_errno())}")
PY
}

cmd_clean_host() {
  cmd_down
  # Network state is shared by every podman container on this machine: leave it while others run.
  if [ -n "$(podman ps -q)" ]; then log "other containers are running; network state left alone"; return; fi
  ip link del cni-podman0 2>/dev/null || true
  delete_cni_iptables
  local ip_forward="" nsdelegate="" netns_mounted=1
  if [ -f "$state" ]; then
    ip_forward=$(sed -n 's/^ip_forward=//p' "$state")
    nsdelegate=$(sed -n 's/^nsdelegate=//p' "$state")
    netns_mounted=$(sed -n 's/^netns_mounted=//p' "$state")
  fi
  if [ "$netns_mounted" = 0 ] && mountpoint -q /run/netns; then umount /run/netns 2>/dev/null || true; fi
  rm -rf /var/lib/cni/networks /var/lib/cni/results
  if [ -n "$ip_forward" ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$ip_forward" ]; then
    echo "$ip_forward" > /proc/sys/net/ipv4/ip_forward
  fi
  if [ "$nsdelegate" = 0 ] && findmnt -n -o OPTIONS /sys/fs/cgroup/unified 2>/dev/null | grep -q nsdelegate; then
    clear_nsdelegate || log "cgroup2 nsdelegate left"
  fi
  rm -f "$state"
  log "host state restored (ip_forward=$(cat /proc/sys/net/ipv4/ip_forward))"
}

case ${1:-} in
  build) cmd_build ;;
  up)
    shift
    cmd_build
    cmd_up "$@"
    ;;
  down) cmd_down ;;
  clean-host) cmd_clean_host ;;
  *)
    echo "usage: $0 build | up N | down | clean-host" >&2
    exit 2
    ;;
esac
