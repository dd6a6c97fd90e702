#!/usr/bin/env bash
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# The collection as users get it: build the tarball, install it with ansible-galaxy into a temporary collections
# directory, and from there run the demo (gpu.mig.site, then gpu.mig.audit, on a simulated fleet), the capacity role
# with its report rendering against a local server, the capacity CLI, and ansible-doc for every plugin and role.
# Nothing of this checkout is on any path: every Python process of the run records each file of the checkout it
# opens (an audit hook, loaded from the temporary directory), and any such file fails the run. The venv (.venv, which
# lives in the checkout) is the only exception: it stands for the user's Python and Ansible.
#   hacking/installed-collection.sh            (make installed-collection; KEEP=1 keeps the temporary directory)
set -euo pipefail

checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
bin=${VENV_BIN:-$checkout/.venv/bin}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-mig-installed.XXXXXX")
coll=$work/collections/ansible_collections/gpu/mig
server_pid=
started=$SECONDS

cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
  [[ -d $work/fleet ]] && "$coll/tests/simulator/migsim" stop "$work/fleet" 2>/dev/null
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

step() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() {
  echo "installed-collection: $*" >&2
  exit 1
}
# Paths of this checkout outside .venv in a text (a file or stdin): none may appear.
checkout_paths() { grep -hoE "$checkout/[^[:space:]\"',]*" "$@" | grep -v "^$checkout/\.venv/" || true; }

# No checkout, no user configuration: the installed collection is the only gpu.mig there is.
unset PYTHONPATH ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATHS
export ANSIBLE_COLLECTIONS_PATH=$work/collections ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_LOCAL_TEMP=$work/ansible-tmp ANSIBLE_REMOTE_TMP=$work/ansible-tmp ANSIBLE_NOCOLOR=1
export ANSIBLE_FORKS=4 ANSIBLE_DEPRECATION_WARNINGS=false
export MIGSIM_PYTHON=$bin/python # the simulator's own commands: the venv's Python (it has pynvml)
export PATH=$bin:$PATH
cd "$work"

step "build and install"
ansible-galaxy collection build --output-path "$work/dist" "$checkout" >/dev/null
ansible-galaxy collection install --offline -p "$work/collections" "$work"/dist/gpu-mig-*.tar.gz >/dev/null
[[ -f $coll/MANIFEST.json && ! -L $coll ]] || fail "the collection was not installed into $coll"
ansible-galaxy collection list gpu.mig --format json | checkout_paths | grep -q . && fail "ansible sees gpu.mig in the checkout"

# From here on, every Python process (controller, workers, local modules, the CLI) records checkout files it opens.
mkdir "$work/guard"
cat >"$work/guard/sitecustomize.py" <<'EOF'
"""Record every file of the checkout (outside its .venv) that this process opens, to GPU_MIG_OPENS_LOG."""
import os
import sys

_ROOT = os.path.realpath(os.environ["GPU_MIG_CHECKOUT"]) + os.sep
_VENV = _ROOT + ".venv" + os.sep
_LOG = os.open(os.environ["GPU_MIG_OPENS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _record(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(_ROOT) and not path.startswith(_VENV):
            os.write(_LOG, ("%s (pid %d, %s)\n" % (path, os.getpid(), " ".join(sys.argv[:2]))).encode())


sys.addaudithook(_record)
EOF
export GPU_MIG_CHECKOUT=$checkout GPU_MIG_OPENS_LOG=$work/checkout-opens.log PYTHONPATH=$work/guard
GPU_MIG_OPENS_LOG=$work/guard-check.txt python -c "open('$checkout/galaxy.yml').close()"
[[ -s $work/guard-check.txt ]] || fail "the guard does not see opened files"

step "where gpu.mig comes from"
where=$(PYTHONPATH=$PYTHONPATH:$work/collections python -c '
import ansible_collections.gpu.mig as c
from ansible_collections.gpu.mig.plugins.plugin_utils import capacity_cli
print(*c.__path__, capacity_cli.__file__)')
echo "$where"
for path in $where; do [[ $path == "$coll"/* || $path == "$coll" ]] || fail "gpu.mig imported from $path"; done

step "simulated fleet: gpu.mig.site, then gpu.mig.audit"
"$coll/tests/simulator/migsim" fleet --dir "$work/fleet" --hosts 3 --mix a100,h100,l4 >/dev/null
[[ -z $(checkout_paths "$work"/fleet/*/python "$work/fleet/inventory.yml") ]] ||
  fail "the simulated hosts point at the checkout: $(checkout_paths "$work"/fleet/*/python | head -3)"
host_where=$("$work/fleet/sim00-a100/python" -c '
import nvmlsim, pynvml
from ansible_collections.gpu.mig.plugins.module_utils._mig import catalog
print(nvmlsim.__file__, catalog.__file__)')
for path in $host_where; do [[ $path == "$coll"/* ]] || fail "a simulated host imports $path"; done
inventory=(-i "$work/fleet/inventory.yml" -i "$coll/inventories/simulated/")
timeout 300 ansible-playbook "${inventory[@]}" gpu.mig.site >"$work/site.log" || fail "gpu.mig.site failed: $(tail -30 "$work/site.log")"
grep -E '^sim.*failed=0' -c "$work/site.log" | grep -qx 3 || fail "gpu.mig.site: $(tail -6 "$work/site.log")"
timeout 120 ansible-playbook "${inventory[@]}" gpu.mig.audit -e gpu_mig_report_dir="$work/report" >"$work/audit.log" ||
  fail "gpu.mig.audit failed: $(tail -30 "$work/audit.log")"
for host in sim00-a100 sim01-h100 sim02-l4; do
  grep -q "$host" "$work/report/fleet-report.md" || fail "the audit report lacks $host"
done
echo "site and audit converged 3 hosts; report:" "$work"/report/*

step "capacity role with plots and Markdown, against a server on 127.0.0.1"
python "$coll/tests/capacity_server/server.py" --port 0 --workers 2 --mean-ms 10 --max-seconds 120 >"$work/server.out" &
server_pid=$!
for _ in $(seq 50); do
  if grep -q LISTENING "$work/server.out"; then break; fi
  sleep 0.1
done
port=$(awk '/LISTENING/ {print $2}' "$work/server.out")
[[ -n $port ]] || fail "the capacity server did not start"
cat >"$work/capacity-inventory.yml" <<EOF
all:
  hosts:
    localhost: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
  children:
    capacity_runners:
      hosts:
        runner1: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
EOF
cat >"$work/capacity-tests.yml" <<EOF
capacity_remote_dir: $work/capacity-remote
capacity_results_dir: $work/capacity
capacity_render_reports: true
capacity_poll_interval: 1
capacity_async_timeout: 120
capacity_tests:
  - service: chat
    url: http://127.0.0.1:$port/infer
    payload: {inputs: []}
    sla: {p95_ms: 100, max_schedule_lag_ms: 100}
    arrival: constant
    start_rps: 50
    step_pct: 100
    max_steps: 2
    confirm: false
    warmup: 0.2
    hold: 0.6
    initial_warmup: 0.2
    time_limit: 60
    noisy_neighbour:
      {service: ocr, url: "http://127.0.0.1:$port/ocr", payload: {}, rps: 20, a_rps: 20, multipliers: [1], hold: 0.5}
EOF
timeout 180 ansible-playbook -i "$work/capacity-inventory.yml" gpu.mig.capacity -e "@$work/capacity-tests.yml" \
  >"$work/capacity.log" || fail "gpu.mig.capacity failed: $(tail -30 "$work/capacity.log")"
report=$work/capacity/runner1/capacity-chat-report
for file in capacity/fleet-capacity.md capacity/fleet-capacity.csv capacity/runner1/capacity-chat.json \
  "${report#"$work"/}"/capacity-chat{.md,-throughput.png,-latency.png,-queue.png,-noisy.png,-noisy.md}; do
  [[ -s $work/$file ]] || fail "the capacity role did not write $file"
done
grep -q '| runner1 | chat |' "$work/capacity/fleet-capacity.md" || fail "no capacity row: $(cat "$work/capacity/fleet-capacity.md")"
grep -q '^## Plots' "$report/capacity-chat.md" || fail "the capacity report has no plots"
echo "capacity role: fleet table and" "$report"/*

step "capacity CLI from the installed collection"
cli=(env "PYTHONPATH=$PYTHONPATH:$work/collections" python -m ansible_collections.gpu.mig.plugins.plugin_utils.capacity_cli)
commands=$("${cli[@]}" --help | grep -oE '\{[a-z,]+\}' | sed -n 1p | tr -d '{}' | tr , ' ')
[[ -n $commands ]] || fail "no subcommands in the CLI's --help"
for command in $commands; do "${cli[@]}" "$command" --help >/dev/null || fail "$command --help failed"; done
"${cli[@]}" report "$work/capacity/runner1/capacity-chat.json" --out "$work/cli-report" >/dev/null
for file in capacity-chat{.md,-throughput.png,-latency.png,-queue.png,-noisy.png}; do
  [[ -s $work/cli-report/$file ]] || fail "the CLI's report did not write $file"
done
[[ $("${cli[@]}" fleet "$work/capacity/runner1/capacity-chat.json" --out "$work/cli-fleet") == *"| runner1 | chat |"* ]] ||
  fail "the CLI's fleet table has no row"
[[ $("${cli[@]}" predict --c 2 --service-ms 10 --sla-ms 100) == *"stays under 100 ms"* ]] || fail "the CLI's predict"
echo "--help of: $commands; report, fleet and predict"

step "ansible-doc for every plugin and role"
docs() { # type, the plugin files or role folders: each is listed by ansible-doc -l and documented
  local kind=$1 expected listed
  shift
  expected=$(names "$@")
  listed=$(ansible-doc -t "$kind" -l gpu.mig --json | python -c 'import json, sys; print(*sorted(json.load(sys.stdin)))')
  [[ $listed == "$expected" ]] || fail "ansible-doc -t $kind lists '$listed', the collection has '$expected'"
  read -ra expected <<<"$expected"
  ansible-doc -t "$kind" --json "${expected[@]}" >"$work/doc-$kind.json"
  python - "$work/doc-$kind.json" "$kind" "$coll" "${expected[@]}" <<'EOF'
import json, sys
path, kind, coll, *names = sys.argv[1:]
docs = json.load(open(path))
for name in names:
    entry = docs.get(name) or {}
    doc = entry.get("entry_points", {}).get("main") if kind == "role" else entry.get("doc")
    where = entry.get("path") if kind == "role" else (doc or {}).get("filename")
    assert doc and (doc.get("options") or doc.get("short_description")), "%s %s has no documentation" % (kind, name)
    assert where and (where + "/").startswith(coll + "/"), "%s %s documented from %s" % (kind, name, where)
print("%s: %s" % (kind, ", ".join(names)))
EOF
}
names() { # gpu.mig.<file or folder name without extension>, sorted as Python sorts
  local path name
  for path in "$@"; do
    name=$(basename "$path")
    echo "gpu.mig.${name%.*}"
  done | LC_ALL=C sort | tr '\n' ' ' | sed 's/ $//'
}
docs module "$coll"/plugins/modules/*.py
docs filter "$coll"/plugins/filter/*.yml
docs role "$coll"/roles/*/
# the action plugin is documented by its module
python -c 'import json, sys; assert json.load(open(sys.argv[1]))["gpu.mig.mig_instances"]["doc"]["has_action"]' \
  "$work/doc-module.json" || fail "ansible-doc does not see the mig_instances action"

step "nothing came from the checkout"
[[ ! -s $work/checkout-opens.log ]] || fail "files of the checkout were opened: $(sort -u "$work/checkout-opens.log" | head -20)"
[[ -z $(checkout_paths "$work"/*.log) ]] || fail "the checkout appears in the logs: $(checkout_paths "$work"/*.log | head -5)"
echo "installed collection: every step passed in $((SECONDS - started)) s"
