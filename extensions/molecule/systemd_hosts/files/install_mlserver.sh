#!/usr/bin/env bash
# Test setup of an inference host (prepare.yml runs it in the background, as a transient unit): MLServer into its own
# venv, then the models trained into their model repositories, and only then /opt/mlserver (the services' command is
# /opt/mlserver/bin/mlserver) as a link to the venv, so that MLServer never starts without its model. Last, niced, the
# byte-compilation (skipped by the install, which it would slow down; MLServer cannot write its venv and starts
# faster with it).
#
#   install_mlserver.sh WHEELHOUSE REQUIREMENTS MODEL_DIR:MODEL_NAME...
set -euo pipefail
wheels=$1 requirements=$2
shift 2
src=$(cd "$(dirname "$0")/../../../.." && pwd)
venv=/opt/mlserver-venv

# No pip inside the venv (ensurepip alone takes longer than the install): the pip wheel of python3-venv runs it.
/usr/bin/python3 -m venv --without-pip "$venv"
pip=(/usr/share/python-wheels/pip-*.whl)
"$venv/bin/python" "${pip[0]}/pip" install --quiet --disable-pip-version-check --no-compile --no-index --no-deps \
  --find-links "$wheels" -r "$requirements"
for model in "$@"; do
  "$venv/bin/python" "$src/tests/servers/train_model.py" "${model%%:*}" --model "${model#*:}"
done
ln -sfn "$venv" /opt/mlserver
nice -n 19 "$venv/bin/python" -m compileall -q -j 0 "$venv/lib"
