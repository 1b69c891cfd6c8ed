"""Who may do what from chat: ``[chat.roles]`` maps roles to platform user ids, fail closed.

Ids are the platforms' own, never display names:

- ``slack:T…:U…`` (workspace id and user id: a user id alone is only unique per workspace),
- ``discord:<snowflake>``,
- ``teams:<AAD object id or channel account id>``.

Roles: ``viewers`` may use the read commands; ``operators`` may also pause, resume and run
non-destructive playbooks (and ask for destructive ones); ``approvers`` may also approve or
deny a waiting request. Operators and approvers may read. Optional per-site restrictions
(``[chat.roles.sites.NAME]``) narrow a role for one site: a user must then be listed there
*and* hold the role globally. A user in no role can do nothing; an unknown key is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["viewer", "operator", "approver"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "approver")

_ID = re.compile(
    r"^(slack:[TE][A-Z0-9]{1,20}:[UW][A-Z0-9]{1,20}"
    r"|discord:[0-9]{5,25}"
    r"|teams:[A-Za-z0-9:_@.\-]{3,200})$"
)


def _ids(values: list[str]) -> list[str]:
    bad = [v for v in values if not _ID.match(v)]
    if bad:
        raise ValueError(
            f"not a platform user id: {', '.join(repr(b) for b in bad)} "
            "(slack:T…:U…, discord:<id>, teams:<id>; never display names)"
        )
    return values


class SiteRoles(BaseModel):
    """``[chat.roles.sites.NAME]``: who of each role may act on this site (unset: everyone
    holding the role)."""

    model_config = ConfigDict(extra="forbid")
    viewers: list[str] | None = None
    operators: list[str] | None = None
    approvers: list[str] | None = None

    @field_validator("viewers", "operators", "approvers")
    @classmethod
    def _check(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _ids(value)


class RolesConfig(BaseModel):
    """``[chat.roles]``."""

    model_config = ConfigDict(extra="forbid")
    viewers: list[str] = Field(default_factory=list, description="read commands")
    operators: list[str] = Field(
        default_factory=list, description="pause/resume, playbooks (destructive: approval)"
    )
    approvers: list[str] = Field(default_factory=list, description="approve/deny requests")
    sites: dict[str, SiteRoles] = Field(default_factory=dict, description="per-site limits")

    @field_validator("viewers", "operators", "approvers")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        return _ids(value)


def _holders(
    viewers: list[str], operators: list[str], approvers: list[str], role: Role
) -> set[str]:
    if role == "viewer":
        return {*viewers, *operators, *approvers}
    return set(operators if role == "operator" else approvers)


@dataclass(frozen=True)
class Roles:
    """The role check. ``allows(user, role, site)`` is False for anything not granted."""

    config: RolesConfig

    def allows(self, user: str, role: Role, site: str | None = None) -> bool:
        c = self.config
        if not user or user not in _holders(c.viewers, c.operators, c.approvers, role):
            return False
        limit = c.sites.get(site) if site else None
        if limit is None:
            return True
        own = {"viewer": limit.viewers, "operator": limit.operators, "approver": limit.approvers}
        if own[role] is None:
            return True  # this role is not narrowed for the site
        if role == "viewer":  # the site's operators and approvers may read it too
            return user in {
                *(limit.viewers or []),
                *(limit.operators or []),
                *(limit.approvers or []),
            }
        return user in set(own[role] or [])

    def roles_of(self, user: str, site: str | None = None) -> list[Role]:
        return [r for r in ROLES if self.allows(user, r, site)]
