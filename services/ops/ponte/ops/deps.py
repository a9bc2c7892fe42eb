"""Dependencies the routes declare by type, so signatures read like the domain."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ponte.ops.status import Schedules


async def get_pulls(request: Request) -> Schedules:
    pulls: Schedules = request.app.state.pulls
    return pulls


PullsDep = Annotated[Schedules, Depends(get_pulls)]
