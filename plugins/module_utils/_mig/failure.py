# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The last line of defence: an exception no handler expected ends as a failed result, never a traceback.

PRIVATE to the collection. Every expected error (bad input, NVML, a GPU that cannot be read) is handled where it
happens, with its own message naming the GPU and the fix; what reaches here is a bug in gpu.mig.
"""

from __future__ import annotations

import contextlib
import traceback

ISSUES_URL = "https://github.com/gpu-mig/gpu.mig/issues"


def bug_message(task: str, err: BaseException) -> str:
    """What the user reads: the error, that it is a bug, where to report it, and what to check meanwhile."""
    return (
        "%s failed unexpectedly (%s: %s). This is a bug in gpu.mig, not a problem with your input: please report it"
        " at %s with this message and the traceback that ansible -vvv shows. Check the host's MIG state with"
        " gpu.mig.mig_facts before retrying." % (task, type(err).__name__, err, ISSUES_URL)
    )


@contextlib.contextmanager
def reported_as_bug(module, task: str):
    """Run the body of ``module``'s main(); turn any exception into fail_json (the traceback only for -vvv)."""
    try:
        yield
    except Exception as err:  # the catch-all; fail_json's SystemExit is no Exception and passes
        module.fail_json(msg=bug_message(task, err), exception=traceback.format_exc())
