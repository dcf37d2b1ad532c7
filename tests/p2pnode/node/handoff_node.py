"""A homeowner node that hands every job off once, built for the tests.

It runs the real ``hearth node`` with one change: right after the first chunk of a
job's first award it cancels that job, exactly as the power governor's shed does
(``CancelRequested("power_shed")`` into the session), then serves the rest of it when
the buyer comes back (its next award, resuming from the delivered tokens). Usage::

    python handoff_node.py /path/to/hearth.toml
"""

from __future__ import annotations

import sys
from typing import Any

if __name__ == "__main__":
    from market.protocol import TokenChunk
    from market.protocol.events import CancelRequested
    from p2pnode.cli.app import main
    from p2pnode.node import provider

    handed: set[bytes] = set()
    real_send = provider._JobSession.send

    async def send(self: Any, action: Any) -> None:
        await real_send(self, action)
        message = action.message
        if isinstance(message, TokenChunk) and message.job_id not in handed:
            handed.add(message.job_id)
            self.events_in.send_nowait(CancelRequested(reason="power_shed"))

    provider._JobSession.send = send  # type: ignore[method-assign]
    sys.argv = ["hearth", "node", "--config", sys.argv[1]]
    main()
