"""/v1/me: the token's owner, its limits and what it uses of them."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from api.service import owners
from api.service.owners import Limits
from api.web.auth import OwnerDep
from api.web.deps import ReadSessionDep, SettingsDep
from api.web.routes.jobs import ERRORS
from api.web.schemas import Me, OwnerLimits, OwnerUsage

router = APIRouter(prefix="/v1/me", tags=["owner"], responses=ERRORS)


@router.get("", summary="Your limits and what you use of them")
def me(session: ReadSessionDep, owner: OwnerDep, settings: SettingsDep) -> Me:
    """The limits are the service's (LSQ_MAX_...) unless an operator set others for you."""
    limits = owners.limits_of(session, owner, Limits.defaults(settings))
    usage = owners.usage_of(session, owner)
    return Me(owner=owner, limits=OwnerLimits(**asdict(limits)), usage=OwnerUsage(**asdict(usage)))
