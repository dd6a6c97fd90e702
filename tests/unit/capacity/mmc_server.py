# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ground-truth server with independent exponential service times: an exact FIFO M/M/c queue.

tests/capacity_server/server.py stratifies its exponential draws (one per 1/200 quantile band, shuffled) so that the
stability capacity c / E[S] holds over a few seconds. Stratified draws are not independent: that server queues less
than M/M/c (at rho = 0.92 its p95 is about 15 % lower), so its SLA capacity has no closed form. This one draws each
service time independently, so Erlang C gives the rate at which p95 reaches the SLA exactly (see
``_capacity.mmc_sla_rate``). Same options and routes as the shared server.
"""

from __future__ import annotations

import asyncio

from ansible_collections.gpu.mig.tests.capacity_server import server as shared


class IidServer(shared.Server):
    def service_time(self) -> float:
        if self.args.service == "exponential" and self.args.mean_ms > 0:
            return self.rng.expovariate(1000.0 / self.args.mean_ms)
        return super().service_time()


if __name__ == "__main__":
    asyncio.run(IidServer(shared.parse_args()).main())
