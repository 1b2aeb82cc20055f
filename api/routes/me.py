"""/v1/me: the token's owner, its limits and what it uses of them."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from .. import owners
from ..auth import OwnerDep
from ..deps import ReadSessionDep, SettingsDep
from ..owners import Limits
from ..schemas import Me, OwnerLimits, OwnerUsage
from .jobs import ERRORS

router = APIRouter(prefix="/v1/me", tags=["owner"], responses=ERRORS)


@router.get("", summary="Your limits and what you use of them")
def me(session: ReadSessionDep, owner: OwnerDep, settings: SettingsDep) -> Me:
    """The limits are the service's (LSQ_MAX_...) unless an operator set others for you."""
    limits = owners.limits_of(session, owner, Limits.defaults(settings))
    usage = owners.usage_of(session, owner)
    return Me(owner=owner, limits=OwnerLimits(**asdict(limits)), usage=OwnerUsage(**asdict(usage)))
