"""Azure Monitor alerts (common alert schema) as tunnel up/down signals, and webhook auth.

`parse_alert` turns the body an action group POSTs (`schemaId: azureMonitorCommonAlertSchema`)
into an `AlertSignal`; `match_site` maps it to the configured sites. Two alert kinds are
understood, per `wave2-chat-devices.md` §D:

- **metric** (and log-search) alerts, e.g. `TunnelAverageBandwidth < 1` on a
  `Microsoft.Network/virtualNetworkGateways`: the connection is the `ConnectionName` dimension;
  `Fired` means down, `Resolved` up (the alert rules are expected to describe a bad tunnel);
- **Resource Health** activity-log alerts on a `Microsoft.Network/connections`: the connection
  is the alert target; `currentHealthStatus` decides (Available → up; Unavailable, Degraded →
  down), since activity-log alerts are never resolved by Azure. Without a known status, a
  resolved health event or `monitorCondition: Resolved` means up.

Everything else (another schema, other activity-log alerts, a body too large or too deep) is
refused with an `AlertError` whose one-line reason can go to the dead-letter stream.

Webhook authentication: a plain action-group webhook is unsigned, so its URL carries a token,
checked with `token_matches` (constant time). A "secure webhook" carries an Entra bearer token,
checked with `verify_entra_token` (RS256 signature from a JWKS, issuer, audience, expiry, roles,
caller app). Nothing here logs, and no error message contains a token.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

import jwt
from pydantic import BaseModel, ConfigDict

SCHEMA_ID = "azureMonitorCommonAlertSchema"
MAX_BODY_BYTES = 256 * 1024  # Azure caps a common-schema alert at 256 KB
MAX_TOKEN_CHARS = 16 * 1024
# The Entra application that sends Azure Monitor secure webhooks ("AZNS AAD Webhook").
ACTION_GROUPS_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"
SECURE_WEBHOOK_ROLE = "ActionGroupsSecureWebhook"  # the app role the docs have you create

Condition = Literal["Fired", "Resolved"]
TunnelState = Literal["down", "up"]
AlertKind = Literal["metric", "log", "resource_health"]

_HEALTH_STATE: dict[str, TunnelState] = {
    "available": "up",
    "unavailable": "down",
    "degraded": "down",
}
_CONNECTION_TYPE = "microsoft.network/connections"


class AlertError(ValueError):
    """Why an alert or its credentials were refused: one line, never a secret."""

    def __init__(self, reason: str) -> None:
        self.reason = _one_line(reason, 300)
        super().__init__(self.reason)


class AlertSignal(BaseModel):
    """What an alert says about tunnels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    alert_rule: str | None
    condition: Condition  # essentials.monitorCondition
    signal_type: str  # Metric, Log, Activity Log
    kind: AlertKind
    state: TunnelState
    connections: list[str]  # connection names: ConnectionName dimensions or connection targets
    resource_ids: list[str]  # essentials.alertTargetIDs, as sent
    configuration_items: list[str]
    health_status: str | None  # Resource Health currentHealthStatus
    fired_at: datetime | None
    resolved_at: datetime | None
    description: str  # one line
    dedupe_key: str  # alertId|monitorCondition: Azure's retries of one notification share it


# --- parsing --------------------------------------------------------------------------------


def parse_alert(
    body: bytes, max_depth: int = 32, *, max_bytes: int = MAX_BODY_BYTES
) -> AlertSignal:
    """Parse and judge one webhook body. Raises `AlertError` with a one-line reason."""
    doc = _load(body, max_depth, max_bytes)
    schema = doc.get("schemaId")
    if schema != SCHEMA_ID:
        raise AlertError(f"unknown schema {_show(schema)}, expected {SCHEMA_ID!r}")
    data = _object(doc, "data")
    essentials = _object(data, "essentials", where="data")
    context = data.get("alertContext") or {}
    if not isinstance(context, dict):
        raise AlertError("data.alertContext is not an object")

    alert_id = _text(essentials, "alertId")
    if len(alert_id) > 1024:
        raise AlertError("essentials.alertId is longer than 1024 characters")
    condition = essentials.get("monitorCondition")
    if condition not in ("Fired", "Resolved"):
        raise AlertError(f"essentials.monitorCondition {_show(condition)} is not Fired or Resolved")
    signal_type = _text(essentials, "signalType")
    targets = _strings(essentials.get("alertTargetIDs"), "essentials.alertTargetIDs")
    items = _strings(essentials.get("configurationItems"), "essentials.configurationItems")

    health: str | None = None
    kind: AlertKind
    if signal_type == "Activity Log":
        if not _is_resource_health(essentials, context):
            service = essentials.get("monitoringService")
            raise AlertError(
                f"unsupported activity log alert (monitoringService {_show(service)}); "
                "only Resource Health is understood"
            )
        kind = "resource_health"
        health, state = _health(condition, context)
        connections = _unique(ref[1] for ref in map(_connection_ref, targets) if ref is not None)
        summary = _health_summary(context, health)
    elif signal_type in ("Metric", "Log"):
        kind = "metric" if signal_type == "Metric" else "log"
        state = "down" if condition == "Fired" else "up"
        connections = _unique(_dimension_values(context, "ConnectionName"))
        summary = _criteria_summary(context)
    else:
        raise AlertError(f"unsupported signalType {_show(signal_type)}")

    rule = essentials.get("alertRule")
    text = essentials.get("description")
    description = _one_line(text if isinstance(text, str) and text.strip() else summary, 200)
    return AlertSignal(
        alert_id=alert_id,
        alert_rule=rule if isinstance(rule, str) else None,
        condition=condition,
        signal_type=signal_type,
        kind=kind,
        state=state,
        connections=connections,
        resource_ids=targets,
        configuration_items=items,
        health_status=health,
        fired_at=_when(essentials.get("firedDateTime")),
        resolved_at=_when(essentials.get("resolvedDateTime")),
        description=description,
        dedupe_key=f"{alert_id}|{condition}",
    )


def _load(body: bytes, max_depth: int, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise AlertError(f"body is {len(body)} bytes, over the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise AlertError("body is not UTF-8") from None
    too_deep = AlertError(f"body is nested deeper than {max_depth} levels")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise too_deep from None
    except json.JSONDecodeError as exc:
        raise AlertError(f"body is not JSON: {exc.msg} at character {exc.pos}") from None
    if _deeper_than(doc, max_depth):
        raise too_deep
    if not isinstance(doc, dict):
        raise AlertError("body is not a JSON object")
    return doc


def _deeper_than(doc: object, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def _is_resource_health(essentials: dict[str, Any], context: dict[str, Any]) -> bool:
    service = str(essentials.get("monitoringService") or "").replace(" ", "").lower()
    source = str(context.get("eventSource") or "").lower()
    operation = str(context.get("operationName") or "").lower()
    return (
        service == "resourcehealth"
        or source == "resourcehealth"
        or operation.startswith("microsoft.resourcehealth/healthevent/")
    )


def _health(condition: str, context: dict[str, Any]) -> tuple[str | None, TunnelState]:
    props = context.get("properties")
    props = props if isinstance(props, dict) else {}
    status = props.get("currentHealthStatus") or props.get("healthStatus")
    status = status if isinstance(status, str) else None
    if status is not None and status.lower() in _HEALTH_STATE:
        return status, _HEALTH_STATE[status.lower()]
    operation = str(context.get("operationName") or "").lower()
    resolved = (
        condition == "Resolved"
        or str(context.get("status") or "").lower() == "resolved"
        or operation.endswith("/healthevent/resolved/action")
    )
    if resolved:
        return status, "up"
    raise AlertError(f"Resource Health status {_show(status)} says neither up nor down")


def _dimension_values(context: dict[str, Any], name: str) -> list[str]:
    """Values of dimension `name` (any case) in condition.allOf[] (metric, log v2) and in
    the top-level `Dimensions` of log alerts v1."""
    lists: list[object] = []
    condition = context.get("condition")
    if isinstance(condition, dict) and isinstance(condition.get("allOf"), list):
        lists += [c.get("dimensions") for c in condition["allOf"] if isinstance(c, dict)]
    lists.append(context.get("Dimensions"))
    values: list[str] = []
    for dims in lists:
        if not isinstance(dims, list):
            continue
        for dim in dims:
            if (
                isinstance(dim, dict)
                and str(dim.get("name", "")).lower() == name.lower()
                and isinstance(dim.get("value"), str)
                and dim["value"]
            ):
                values.append(dim["value"])
    return values


def _criteria_summary(context: dict[str, Any]) -> str:
    condition = context.get("condition")
    criteria = condition.get("allOf") if isinstance(condition, dict) else None
    if not isinstance(criteria, list):
        return ""
    parts = [
        f"{c.get('metricName')} {c.get('operator')} {c.get('threshold')} "
        f"(value {c.get('metricValue')})"
        for c in criteria
        if isinstance(c, dict) and c.get("metricName")
    ]
    return "; ".join(parts)


def _health_summary(context: dict[str, Any], status: str | None) -> str:
    props = context.get("properties")
    props = props if isinstance(props, dict) else {}
    title = props.get("title") if isinstance(props.get("title"), str) else "Resource Health"
    previous = props.get("previousHealthStatus")
    if status and isinstance(previous, str):
        return f"{title} ({previous} -> {status})"
    return f"{title} ({status})" if status else str(title)


# --- sites ----------------------------------------------------------------------------------


def match_site(signal: AlertSignal, sites: Mapping[str, tuple[str, str]]) -> list[str]:
    """The sites, in `sites` order, an alert is about. `sites` maps a site to its connection's
    `(resource_group, connection_name)`.

    An alert that targets connections (Resource Health) matches by resource id: resource group
    and name, case-insensitive (subscription not compared). Otherwise (a metric alert on the
    gateway) it matches by connection name, case-insensitive.
    """
    refs = {ref for ref in map(_connection_ref, signal.resource_ids) if ref is not None}
    if refs:
        return [site for site, (rg, name) in sites.items() if (rg.lower(), name.lower()) in refs]
    names = {name.lower() for name in signal.connections}
    return [site for site, (_, name) in sites.items() if name.lower() in names]


def _connection_ref(resource_id: str) -> tuple[str, str] | None:
    """`(resource_group, name)` lower-cased, when `resource_id` is a
    `Microsoft.Network/connections` id; else None."""
    parts = resource_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if (
        len(parts) == 8
        and lowered[0] == "subscriptions"
        and lowered[2] == "resourcegroups"
        and lowered[4] == "providers"
        and f"{lowered[5]}/{lowered[6]}" == _CONNECTION_TYPE
        and parts[7]
    ):
        return lowered[3], lowered[7]
    return None


# --- webhook authentication -----------------------------------------------------------------


def token_matches(presented: str | None, expected: str) -> bool:
    """The URL `?token=` against the configured one, in constant time. An empty configured
    token never matches (an unset secret must not open the door)."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AlertError("no bearer token")
    return token.strip()


class SigningKeys(Protocol):
    """What `jwt.PyJWKClient` offers (it fetches and caches the JWKS; blocking I/O, so call
    `verify_entra_token` from a thread when you pass one)."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


def verify_entra_token(
    token: str,
    *,
    jwks: Mapping[str, Any] | SigningKeys,
    issuer: str | Collection[str],
    audience: str | Collection[str],
    required_roles: Collection[str],
    app_ids: Collection[str] | None = (ACTION_GROUPS_APP_ID,),
    leeway: float = 60.0,
) -> dict[str, Any]:
    """Validate an Azure Monitor secure-webhook bearer token and return its claims.

    Checks: RS256 signature by a key of `jwks` (a JWKS document, e.g. from
    `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`, or a `PyJWKClient`),
    expiry and not-before (with `leeway` seconds), `aud` in `audience` (your app's client id or
    App ID URI), `iss` in `issuer` (v2.0 tokens: `https://login.microsoftonline.com/{tenant}/
    v2.0`; v1.0: `https://sts.windows.net/{tenant}/`), every role of `required_roles` in
    `roles`, and the caller (`azp`, or `appid` in v1.0 tokens) in `app_ids` unless that is None.
    Raises `AlertError`; no message contains the token.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise AlertError("bearer token missing or too long")
    key = _signing_key(token, jwks)
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience=[audience] if isinstance(audience, str) else list(audience),
            leeway=leeway,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise AlertError("bearer token expired") from None
    except jwt.ImmatureSignatureError:
        raise AlertError("bearer token not valid yet") from None
    except jwt.InvalidAudienceError:
        raise AlertError("bearer token audience is not ours") from None
    except jwt.InvalidSignatureError:
        raise AlertError("bearer token signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AlertError(f"bearer token has no {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise AlertError("bearer token algorithm is not RS256") from None
    except jwt.InvalidTokenError as exc:
        raise AlertError(f"bearer token invalid ({type(exc).__name__})") from None

    issuers = {issuer} if isinstance(issuer, str) else set(issuer)
    if claims.get("iss") not in issuers:
        raise AlertError("bearer token issuer is not trusted")
    roles = claims.get("roles")
    held = {r for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()
    missing = sorted(set(required_roles) - held)
    if missing:
        raise AlertError(f"bearer token lacks role {', '.join(missing)}")
    if app_ids is not None:
        caller = claims.get("azp") or claims.get("appid")
        if caller not in set(app_ids):
            raise AlertError("bearer token was not issued to the Azure Monitor action groups app")
    return claims


def _signing_key(token: str, jwks: Mapping[str, Any] | SigningKeys) -> jwt.PyJWK:
    if not isinstance(jwks, Mapping):
        try:
            return jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError:
            raise AlertError("bearer token signing key not found") from None
        except jwt.DecodeError:
            raise AlertError("bearer token is malformed") from None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise AlertError("bearer token is malformed") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AlertError("bearer token has no key id")
    try:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
    except (jwt.PyJWKSetError, jwt.PyJWKError):
        raise AlertError("key set has no usable keys") from None
    for key in keyset.keys:
        if key.key_id == kid:
            return key
    raise AlertError(f"bearer token signing key {_show(kid)} is not in the key set")


# --- small helpers --------------------------------------------------------------------------


def _object(parent: dict[str, Any], key: str, *, where: str = "") -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise AlertError(f"{where + '.' if where else ''}{key} is missing or not an object")
    return value


def _text(essentials: dict[str, Any], key: str) -> str:
    value = essentials.get(key)
    if not isinstance(value, str) or not value:
        raise AlertError(f"essentials.{key} is missing or not a string")
    return value


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AlertError(f"{where} is not a list of strings")
    return list(value)


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for value in values:
        seen.setdefault(value.lower(), value)
    return list(seen.values())


def _when(value: object) -> datetime | None:
    """ISO 8601 as Azure writes it (7 fractional digits, `Z`); None when absent or odd."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _one_line(text: str, limit: int) -> str:
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _show(value: object) -> str:
    """A value for an error message: repr, one line, short."""
    return _one_line(repr(value), 80)
