"""Request-body validation and normalisation per resource type (NRP rules we model).

Kept apart from :mod:`bot.sim.world` so the world reads as state + behaviour;
every check raises the ARM error code the real provider would return.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from bot.sim.errors import ArmError, bad_request
from bot.sim.resources import Kind, Resource, new_etag, parse_id

CONNECTION_TYPES = {t.lower(): t for t in ("IPsec", "Vnet2Vnet", "ExpressRoute", "VPNClient")}


def ipv4(value: Any, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise bad_request(f"{what} '{value}' is not a valid IPv4 address.") from None


def validate_lng(props: dict[str, Any]) -> None:
    ip, fqdn = props.get("gatewayIpAddress"), props.get("fqdn")
    if not ip and not fqdn:
        raise bad_request(
            "Either gatewayIpAddress or fqdn must be specified for a local network gateway."
        )
    if ip:
        props["gatewayIpAddress"] = ipv4(ip, "gatewayIpAddress")
    if fqdn is not None and not isinstance(fqdn, str):
        raise bad_request("fqdn must be a string.")
    space = props.setdefault("localNetworkAddressSpace", {"addressPrefixes": []})
    prefixes = space.get("addressPrefixes", []) if isinstance(space, dict) else None
    if not isinstance(prefixes, list):
        raise bad_request("localNetworkAddressSpace.addressPrefixes must be a list.")
    for prefix in prefixes:
        try:
            ipaddress.ip_network(str(prefix), strict=False)
        except ValueError:
            raise bad_request(f"Address prefix '{prefix}' is not a valid CIDR.") from None


def validate_vng(rid: str, props: dict[str, Any]) -> None:
    for key, default in (
        ("gatewayType", "Vpn"),
        ("vpnType", "RouteBased"),
        ("enableBgp", False),
        ("activeActive", False),
        ("sku", {"name": "VpnGw1", "tier": "VpnGw1"}),
    ):
        props.setdefault(key, default)
    configs = props.setdefault("ipConfigurations", [])
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise bad_request("ipConfigurations must be a list of objects.")
    for index, cfg in enumerate(configs):
        cfg_name = str(cfg.get("name") or f"ipconfig{index + 1}")
        cfg.update(name=cfg_name, id=f"{rid}/ipConfigurations/{cfg_name}", etag=new_etag())
        inner = cfg.setdefault("properties", {})
        if isinstance(inner, dict):
            inner["provisioningState"] = "Succeeded"


def validate_connection(
    rid: str, props: dict[str, Any], resources: dict[str, Resource]
) -> str | None:
    key = props.pop("sharedKey", None)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        raise bad_request("sharedKey must be a string of 1-128 characters.", "InvalidSharedKey")
    ctype = CONNECTION_TYPES.get(str(props.get("connectionType", "")).lower())
    if ctype is None:
        raise bad_request(
            "connectionType is required and must be one of "
            + ", ".join(CONNECTION_TYPES.values())
            + "."
        )
    props["connectionType"] = ctype
    required = [("virtualNetworkGateway1", Kind.VNG)]
    if ctype == "IPsec":
        required.append(("localNetworkGateway2", Kind.LNG))
    elif ctype == "Vnet2Vnet":
        required.append(("virtualNetworkGateway2", Kind.VNG))
    for prop, kind in required:
        ref = props.get(prop)
        ref_id = ref.get("id") if isinstance(ref, dict) else None
        if not isinstance(ref_id, str) or not ref_id:
            raise bad_request(
                f"Property 'properties.{prop}.id' is required for {ctype} connections."
            )
        parsed = parse_id(ref_id)
        if parsed is None or parsed[2] is not kind:
            raise ArmError(
                400,
                "LinkedInvalidPropertyId",
                f"Property id '{ref_id}' at path 'properties.{prop}.id' is invalid. "
                "Expect fully qualified resource Id that start with "
                "'/subscriptions/{subscriptionId}' or "
                "'/providers/{resourceProviderNamespace}/'.",
            )
        target = resources.get(ref_id.lower().rstrip("/"))
        if target is None or target.provisioning_state == "Deleting":
            raise ArmError(
                400,
                "InvalidResourceReference",
                f"Resource {ref_id} referenced by resource {rid} was not found. Please make "
                "sure that the referenced resource exists, and that both resources are in "
                "the same region.",
            )
        props[prop] = {"id": target.id, "properties": {}}
    for prop, default in (
        ("connectionProtocol", "IKEv2"),
        ("routingWeight", 0),
        ("dpdTimeoutSeconds", 45),
        ("enableBgp", False),
        ("useLocalAzureIpAddress", False),
        ("usePolicyBasedTrafficSelectors", False),
        ("ipsecPolicies", []),
        ("trafficSelectorPolicies", []),
        ("connectionMode", "Default"),
    ):
        props.setdefault(prop, default)
    return key
