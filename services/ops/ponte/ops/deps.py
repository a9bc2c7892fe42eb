"""Dependencies the routes declare by type, so signatures read like the domain."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ponte.ops.status import Schedules
from ponte.shared.secret_box import SecretBox


async def get_pulls(request: Request) -> Schedules:
    pulls: Schedules = request.app.state.pulls
    return pulls


PullsDep = Annotated[Schedules, Depends(get_pulls)]


async def get_secret_box(request: Request) -> SecretBox:
    """The box of PONTE_SECRETS_KEY (built at start: ops refuses to run without a key),
    to open stored secrets for their fingerprints and seal new ones."""
    box: SecretBox = request.app.state.secret_box
    return box


BoxDep = Annotated[SecretBox, Depends(get_secret_box)]
