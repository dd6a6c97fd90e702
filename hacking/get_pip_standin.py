# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline stand-in for get-pip.py, which ansible-test downloads from a host CI cannot reach.

ansible-test runs it as: get_pip.py --disable-pip-version-check pip==24.2 [--no-setuptools] [--no-wheel].
ensurepip must run in a subprocess: in-process it sets PIP_CONFIG_FILE=/dev/null and pip loses /etc/pip.conf.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", *args])
if "--no-setuptools" in sys.argv[1:]:
    subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "setuptools"])
