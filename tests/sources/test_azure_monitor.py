"""Azure Monitor intake (bot.sources.azure_monitor): alert parsing, site mapping, webhook auth.

The alert bodies are the samples in `samples/azure-monitor/` (see its README for the Microsoft
documents each was built from). The secure-webhook tokens are signed offline with RSA keys made
here, published as a JWKS the way Entra publishes its keys.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_encode

from bot.sources.azure_monitor import (
    ACTION_GROUPS_APP_ID,
    MAX_BODY_BYTES,
    SECURE_WEBHOOK_ROLE,
    AlertError,
    AlertSignal,
    bearer_token,
    match_site,
    parse_alert,
    token_matches,
    verify_entra_token,
)

SAMPLES = Path(__file__).parent / "samples" / "azure-monitor"
SUB = "11111111-1111-1111-1111-111111111111"


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return doc


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def parse(name: str) -> AlertSignal:
    return parse_alert((SAMPLES / name).read_bytes())


def refused(raw: bytes, **kwargs: Any) -> str:
    with pytest.raises(AlertError) as info:
        parse_alert(raw, **kwargs)
    reason = info.value.reason
    assert reason == str(info.value) and "\n" not in reason and len(reason) <= 300
    return reason


# --- metric alerts --------------------------------------------------------------------------


def test_metric_alert_fired_means_the_connection_is_down() -> None:
    signal = parse("metric-fired-tunnel-bandwidth.json")
    alert_id = (
        f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/"
        "6f1c2d2e-7a3b-4c1e-9a57-1b2c3d4e5f60"
    )
    assert signal.alert_id == alert_id
    assert signal.alert_rule == "vng-hub-tunnel-bandwidth-low"
    assert (signal.kind, signal.signal_type, signal.condition) == ("metric", "Metric", "Fired")
    assert signal.state == "down"
    assert signal.connections == ["cn-Site-A"]
    assert signal.resource_ids == [
        f"/subscriptions/{SUB}/resourcegroups/rg-hub/providers/microsoft.network/"
        "virtualnetworkgateways/vng-hub"
    ]
    assert signal.configuration_items == ["vng-hub"]
    assert signal.fired_at == datetime(2026, 11, 20, 3, 12, 44, 123456, tzinfo=UTC)
    assert signal.resolved_at is None
    assert signal.description == "Tunnel bandwidth below 1 B/s: the site-to-site tunnel is down"
    assert signal.dedupe_key == f"{alert_id}|Fired"
    assert signal.health_status is None


def test_metric_alert_resolved_means_up_and_dedupes_apart_from_the_firing() -> None:
    fired = parse("metric-fired-tunnel-bandwidth.json")
    resolved = parse("metric-resolved-tunnel-bandwidth.json")
    assert (resolved.condition, resolved.state) == ("Resolved", "up")
    assert resolved.alert_id == fired.alert_id
    assert resolved.dedupe_key == f"{fired.alert_id}|Resolved" != fired.dedupe_key
    assert resolved.resolved_at == datetime(2026, 11, 20, 3, 27, 51, 31415, tzinfo=UTC)
    assert resolved.connections == ["cn-Site-A"]
    # Azure retrying the same notification gives the same key.
    assert parse("metric-resolved-tunnel-bandwidth.json").dedupe_key == resolved.dedupe_key


def test_ingress_bytes_alert_dimension_name_in_any_case_and_summary_description() -> None:
    signal = parse("metric-fired-tunnel-ingress-bytes.json")
    assert signal.state == "down"
    assert signal.connections == ["cn-site-b"]  # dimension written "connectionname"
    assert signal.description == "TunnelIngressBytes LessThan 1 (value 0)"  # no description


def test_metric_alert_on_the_gateway_without_a_connection_dimension() -> None:
    doc = sample("metric-fired-tunnel-bandwidth.json")
    criterion = doc["data"]["alertContext"]["condition"]["allOf"][0]
    criterion["metricName"] = "AverageBandwidth"
    criterion["dimensions"] = []
    signal = parse_alert(body(doc))
    assert signal.connections == [] and signal.state == "down"
    assert match_site(signal, SITES) == []  # nothing to attribute it to


# --- Resource Health ------------------------------------------------------------------------


def test_resource_health_unavailable_is_down_for_the_target_connection() -> None:
    signal = parse("resource-health-unavailable.json")
    assert (signal.kind, signal.signal_type, signal.condition) == (
        "resource_health",
        "Activity Log",
        "Fired",
    )
    assert signal.state == "down"
    assert signal.health_status == "Unavailable"
    assert signal.connections == ["cn-site-b"]
    assert signal.description == "The VPN connection is disconnected (Available -> Unavailable)"


def test_resource_health_available_is_up_although_the_alert_says_fired() -> None:
    signal = parse("resource-health-available.json")
    assert (signal.condition, signal.state, signal.health_status) == ("Fired", "up", "Available")
    assert signal.dedupe_key.endswith("4dae8f20-5a2b-4d8c-b6e4-0f1a2b3c4d5e|Fired")


def test_resource_health_degraded_is_down() -> None:
    signal = parse("resource-health-degraded.json")
    assert (signal.state, signal.health_status, signal.connections) == (
        "down",
        "Degraded",
        ["cn-site-c"],
    )
    assert signal.description == "The VPN connection is degraded (Available -> Degraded)"


def test_resource_health_without_a_known_status_needs_a_resolution() -> None:
    doc = sample("resource-health-unavailable.json")
    doc["data"]["alertContext"]["properties"]["currentHealthStatus"] = "Unknown"
    assert "Resource Health status 'Unknown' says neither up nor down" in refused(body(doc))

    resolved_event = copy.deepcopy(doc)
    resolved_event["data"]["alertContext"]["status"] = "Resolved"
    signal = parse_alert(body(resolved_event))
    assert (signal.state, signal.health_status) == ("up", "Unknown")

    resolved_alert = copy.deepcopy(doc)
    del resolved_alert["data"]["alertContext"]["properties"]["currentHealthStatus"]
    resolved_alert["data"]["essentials"]["monitorCondition"] = "Resolved"
    signal = parse_alert(body(resolved_alert))
    assert (signal.state, signal.condition, signal.health_status) == ("up", "Resolved", None)


def test_other_activity_log_alerts_are_refused() -> None:
    doc = sample("resource-health-unavailable.json")
    doc["data"]["essentials"]["monitoringService"] = "Activity Log - Administrative"
    context = doc["data"]["alertContext"]
    context["eventSource"] = "Administrative"
    context["operationName"] = "Microsoft.Network/connections/write"
    reason = refused(body(doc))
    assert reason.startswith("unsupported activity log alert (monitoringService 'Activity Log")


# --- refusals -------------------------------------------------------------------------------


def test_unknown_schema_is_refused_with_a_one_line_reason() -> None:
    reason = refused((SAMPLES / "budget-other-schema.json").read_bytes())
    assert reason == (
        "unknown schema 'AIP Budget Notification', expected 'azureMonitorCommonAlertSchema'"
    )
    assert refused(b'{"data": {}}').startswith("unknown schema None")
    multi_line = json.dumps({"schemaId": "evil\nschema", "data": {}}).encode()
    assert refused(multi_line).startswith("unknown schema 'evil\\nschema'")


def test_common_schema_without_a_monitor_condition_is_refused() -> None:
    reason = refused((SAMPLES / "cost-budget-no-condition.json").read_bytes())
    assert reason == "essentials.monitorCondition None is not Fired or Resolved"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe{}", "body is not UTF-8"),
        (b"{not json", "body is not JSON: Expecting property name"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'{"schemaId": "azureMonitorCommonAlertSchema"}', "data is missing or not an object"),
        (
            b'{"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": []}}',
            "data.essentials is missing or not an object",
        ),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, why: str) -> None:
    assert refused(raw).startswith(why)


def test_bad_field_types_are_refused() -> None:
    doc = sample("metric-fired-tunnel-bandwidth.json")
    doc["data"]["essentials"]["alertTargetIDs"] = "not-a-list"
    assert refused(body(doc)) == "essentials.alertTargetIDs is not a list of strings"
    doc = sample("metric-fired-tunnel-bandwidth.json")
    doc["data"]["essentials"]["signalType"] = "Smoke"
    assert refused(body(doc)) == "unsupported signalType 'Smoke'"


def test_deeply_nested_bodies_are_refused_cleanly() -> None:
    # Far deeper than the JSON parser's recursion allows, within the size limit.
    assert refused(b"[" * 100_000 + b"]" * 100_000) == "body is nested deeper than 32 levels"
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"x": deep}
    doc = sample("metric-fired-tunnel-bandwidth.json")
    doc["data"]["customProperties"] = deep
    assert refused(body(doc)) == "body is nested deeper than 32 levels"
    # A metric alert nests 8 levels (body, data, alertContext, condition, allOf, criterion,
    # dimensions, dimension): fine by default, too deep for a limit of 7.
    raw = (SAMPLES / "metric-fired-tunnel-bandwidth.json").read_bytes()
    assert parse_alert(raw, max_depth=8).state == "down"
    assert refused(raw, max_depth=7) == "body is nested deeper than 7 levels"


def test_huge_bodies_are_refused_before_parsing() -> None:
    doc = sample("metric-fired-tunnel-bandwidth.json")
    doc["data"]["customProperties"] = {"padding": "x" * MAX_BODY_BYTES}
    raw = body(doc)
    assert refused(raw) == f"body is {len(raw)} bytes, over the limit of {MAX_BODY_BYTES}"
    small = (SAMPLES / "metric-fired-tunnel-bandwidth.json").read_bytes()
    assert refused(small, max_bytes=100).endswith("over the limit of 100")


def test_long_descriptions_are_cut_to_one_line() -> None:
    doc = sample("metric-fired-tunnel-bandwidth.json")
    doc["data"]["essentials"]["description"] = "line one\r\n\tline two " + "z" * 500
    description = parse_alert(body(doc)).description
    assert description.startswith("line one line two zzz") and len(description) == 200


# --- site mapping ---------------------------------------------------------------------------

SITES = {
    "site-a": ("rg-sites", "cn-site-a"),
    "site-b": ("RG-Sites", "CN-SITE-B"),
    "site-c": ("rg-other", "cn-site-c"),
    "site-d": ("rg-other", "cn-site-b"),  # same connection name, another resource group
}


def test_metric_alerts_map_by_connection_name_case_insensitively() -> None:
    assert match_site(parse("metric-fired-tunnel-bandwidth.json"), SITES) == ["site-a"]
    # A name alone cannot tell resource groups apart: both sites named cn-site-b match.
    assert match_site(parse("metric-fired-tunnel-ingress-bytes.json"), SITES) == [
        "site-b",
        "site-d",
    ]


def test_resource_health_alerts_map_by_resource_id() -> None:
    # rg-sites/cn-site-b: site-b (resource group and name, any case), not site-d.
    assert match_site(parse("resource-health-unavailable.json"), SITES) == ["site-b"]
    # rg-sites/cn-site-c is not site-c's connection (that one is in rg-other).
    assert match_site(parse("resource-health-degraded.json"), SITES) == []
    assert match_site(parse("resource-health-available.json"), {"x": ("rg-sites", "cn-site-b")})


def test_no_site_matches_an_unconfigured_connection() -> None:
    assert match_site(parse("metric-fired-tunnel-bandwidth.json"), {"b": ("rg", "cn-b")}) == []


# --- URL token ------------------------------------------------------------------------------


def test_url_token_compare() -> None:
    assert token_matches("s3cret-token", "s3cret-token")
    assert not token_matches("s3cret-tokeN", "s3cret-token")
    assert not token_matches("s3cret", "s3cret-token")
    assert not token_matches(None, "s3cret-token")
    assert not token_matches("", "")  # an unset token never opens the door
    assert token_matches("jeton-é", "jeton-é")


def test_bearer_token_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Basic dXNlcjpwYXNz", "Bearer "):
        with pytest.raises(AlertError, match="no bearer token"):
            bearer_token(bad)


# --- secure webhook (Entra bearer token) ----------------------------------------------------

TENANT = "72f988bf-0000-4000-8000-2d7cd011db47"
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
AUDIENCE = "api://tunnelwarden-hooks"


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {
        "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "k2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture(scope="module")
def jwks(keys: dict[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    published = []
    for kid in ("k1", "k2"):
        jwk = json.loads(RSAAlgorithm.to_jwk(keys[kid].public_key()))
        published.append({**jwk, "kid": kid, "use": "sig"})
    return {"keys": published}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "azp": ACTION_GROUPS_APP_ID,
        "roles": [SECURE_WEBHOOK_ROLE],
        "tid": TENANT,
        "ver": "2.0",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str | None = "k1") -> str:
    headers = {"kid": kid} if kid else {}
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


def verify(token: str, jwks: Any) -> dict[str, Any]:
    return verify_entra_token(
        token,
        jwks=jwks,
        issuer=ISSUER,
        audience=AUDIENCE,
        required_roles=[SECURE_WEBHOOK_ROLE],
    )


def rejected(token: str, jwks: Any) -> str:
    with pytest.raises(AlertError) as info:
        verify(token, jwks)
    reason = info.value.reason
    assert (not token or token not in reason) and "\n" not in reason
    return reason


def test_valid_token(keys: dict[str, rsa.RSAPrivateKey], jwks: dict[str, Any]) -> None:
    token = sign(keys["k1"], claims())
    got = verify(token, jwks)
    assert got["azp"] == ACTION_GROUPS_APP_ID and got["roles"] == [SECURE_WEBHOOK_ROLE]
    assert verify(sign(keys["k2"], claims(), kid="k2"), jwks)["iss"] == ISSUER  # key rotation
    # A v1.0 token names the caller in appid; several issuers/audiences may be accepted.
    v1 = claims(iss=f"https://sts.windows.net/{TENANT}/", azp=None, appid=ACTION_GROUPS_APP_ID)
    got = verify_entra_token(
        sign(keys["k1"], v1),
        jwks=jwks,
        issuer=[ISSUER, f"https://sts.windows.net/{TENANT}/"],
        audience=["00000000-aaaa-bbbb-cccc-000000000000", AUDIENCE],
        required_roles=[SECURE_WEBHOOK_ROLE],
    )
    assert got["appid"] == ACTION_GROUPS_APP_ID


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"aud": "api://someone-else"}, "bearer token audience is not ours"),
        ({"iss": "https://login.microsoftonline.com/evil/v2.0"}, "bearer token issuer is not"),
        ({"exp": int(time.time()) - 3600}, "bearer token expired"),
        ({"nbf": int(time.time()) + 3600}, "bearer token not valid yet"),
        ({"roles": ["Reader"]}, "bearer token lacks role ActionGroupsSecureWebhook"),
        ({"roles": None}, "bearer token lacks role ActionGroupsSecureWebhook"),
        ({"azp": "99999999-0000-0000-0000-000000000000"}, "bearer token was not issued to"),
        ({"exp": None}, "bearer token has no 'exp' claim"),
    ],
)
def test_rejected_claims(
    keys: dict[str, rsa.RSAPrivateKey],
    jwks: dict[str, Any],
    overrides: dict[str, Any],
    why: str,
) -> None:
    assert rejected(sign(keys["k1"], claims(**overrides)), jwks).startswith(why)


def test_bad_signature(keys: dict[str, rsa.RSAPrivateKey], jwks: dict[str, Any]) -> None:
    forged = sign(keys["other"], claims(), kid="k1")  # claims a published kid
    assert rejected(forged, jwks) == "bearer token signature does not verify"
    head, _, signature = sign(keys["k1"], claims()).split(".")
    tampered_payload = base64url_encode(
        json.dumps(claims(roles=[SECURE_WEBHOOK_ROLE, "Admin"])).encode()
    ).decode()
    assert rejected(f"{head}.{tampered_payload}.{signature}", jwks) == (
        "bearer token signature does not verify"
    )


def test_unknown_key_missing_kid_and_garbage(
    keys: dict[str, rsa.RSAPrivateKey], jwks: dict[str, Any]
) -> None:
    assert rejected(sign(keys["other"], claims(), kid="k9"), jwks) == (
        "bearer token signing key 'k9' is not in the key set"
    )
    assert rejected(sign(keys["k1"], claims(), kid=None), jwks) == "bearer token has no key id"
    assert rejected("not-a-jwt", jwks) == "bearer token is malformed"
    assert rejected("", jwks) == "bearer token missing or too long"
    assert rejected("a" * 20_000, jwks) == "bearer token missing or too long"
    assert rejected(sign(keys["k1"], claims()), {"keys": []}) == "key set has no usable keys"


def test_hmac_algorithm_confusion_is_refused(
    keys: dict[str, rsa.RSAPrivateKey], jwks: dict[str, Any]
) -> None:
    # Signing HS256 with the public key as the secret must not pass as RS256.
    public_pem = (
        keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = base64url_encode(json.dumps(claims()).encode())
    signing_input = header + b"." + payload
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + base64url_encode(mac)).decode()
    assert rejected(token, jwks) == "bearer token algorithm is not RS256"


class FakeJWKClient:
    """Stands in for jwt.PyJWKClient: serves keys from a local JWKS, counts lookups."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.keyset = jwt.PyJWKSet.from_dict(jwks)
        self.lookups = 0

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        self.lookups += 1
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self.keyset.keys:
            if key.key_id == kid:
                return key
        raise jwt.PyJWKClientError(f"Unable to find a signing key that matches: {kid!r}")


def test_a_jwk_client_can_supply_the_keys(
    keys: dict[str, rsa.RSAPrivateKey], jwks: dict[str, Any]
) -> None:
    client = FakeJWKClient(jwks)
    assert verify(sign(keys["k2"], claims(), kid="k2"), client)["tid"] == TENANT
    assert rejected(sign(keys["other"], claims(), kid="zz"), client) == (
        "bearer token signing key not found"
    )
    assert rejected("garbage", client) == "bearer token is malformed"
    assert client.lookups == 3
