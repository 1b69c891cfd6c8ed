"""Request-body validation and normalisation per resource type (NRP rules we model).

Kept apart from :mod:`bot.sim.world` so the world reads as state + behaviour;
every check raises the ARM error code the real provider would return.

What the checks answer, and how sure we are (looked up in public issue threads and the
azure-rest-api-specs enums, not measured against Azure):

- **Resource names** (LNGs, connections, gateways): 1-80 characters, starting with a word
  character, ending with a word character or ``_``, containing only word characters, ``.``,
  ``-``, ``_``. Answer: 400 ``InvalidResourceName`` with NRP's message *"Resource name X is
  invalid. The name can be up to 80 characters long. It must begin with a word character, and
  it must end with a word character or with '_'. The name may contain word characters or '.',
  '-', '_'."* (verbatim from an NRP answer quoted in rh-mobb/documentation#204; same rule as
  the resource-name-rules doc). Verified for another NRP type only.
- **Enum values** (``connectionType``, ``connectionProtocol``, ``connectionMode``,
  ``authenticationType``, the six ``ipsecPolicies[]`` enums, ``gatewayType``, ``vpnType``,
  ``sku.name``/``sku.tier``, ``vpnGatewayGeneration``; value sets from the SDK/spec enums).
  NRP deserialises bodies with Newtonsoft.Json, which matches enum names case-insensitively,
  and echoes the canonical spelling. An unknown value is a 400 ``InvalidRequestFormat``
  *"Cannot parse the request."* with a ``details`` entry ``InvalidJson`` *"Error converting
  value "X" to type 'Microsoft.WindowsAzure.Networking.Nrp.Frontend.Contract.Csm.Public.T'.
  Path 'properties.p'..."* (shape verified in azure-cli#1619/#2122 and hashicorp/packer#4928,
  2017). Not verified: the exact .NET type names (we use the spec enum names), that newer
  api-versions still answer this way, and the ``line N, position M`` suffix (omitted).
- **Location mismatch** between a connection and its ``virtualNetworkGateway1`` or
  ``localNetworkGateway2``: 400 ``InvalidResourceReference`` with NRP's message *"Resource R
  referenced by resource C was not found. Please make sure that the referenced resource
  exists, and that both resources are in the same region."* That message is verified (many
  threads); that NRP sends exactly it for a region mismatch of a connection is inferred from
  its wording, not verified. ``virtualNetworkGateway2`` (Vnet2Vnet) may be in another region.
- Not modelled: SKU/gateway-type combinations (``InvalidGatewaySkuSpecifiedForGateway
  DeploymentType``), active-active needing two ip configurations, the "all eight IPsec
  parameters are required" rule, BGP ASN rules.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from bot.sim.errors import (
    ArmError,
    bad_request,
    invalid_enum_value,
    invalid_resource_group_name,
    invalid_resource_name,
)
from bot.sim.resources import Kind, Resource, new_etag, parse_id


def _enum(*values: str) -> dict[str, str]:
    return {v.lower(): v for v in values}


CONNECTION_TYPES = _enum("IPsec", "Vnet2Vnet", "ExpressRoute", "VPNClient")
CONNECTION_PROTOCOLS = _enum("IKEv2", "IKEv1")
CONNECTION_MODES = _enum("Default", "ResponderOnly", "InitiatorOnly")
AUTHENTICATION_TYPES = _enum("PSK", "Certificate")
IPSEC_POLICY_ENUMS: dict[str, tuple[str, dict[str, str]]] = {
    "ipsecEncryption": (
        "IpsecEncryption",
        _enum(
            "None",
            "DES",
            "DES3",
            "AES128",
            "AES192",
            "AES256",
            "GCMAES128",
            "GCMAES192",
            "GCMAES256",
        ),
    ),
    "ipsecIntegrity": (
        "IpsecIntegrity",
        _enum("MD5", "SHA1", "SHA256", "GCMAES128", "GCMAES192", "GCMAES256"),
    ),
    "ikeEncryption": (
        "IkeEncryption",
        _enum("DES", "DES3", "AES128", "AES192", "AES256", "GCMAES256", "GCMAES128"),
    ),
    "ikeIntegrity": (
        "IkeIntegrity",
        _enum("MD5", "SHA1", "SHA256", "SHA384", "GCMAES256", "GCMAES128"),
    ),
    "dhGroup": (
        "DhGroup",
        _enum(
            "None",
            "DHGroup1",
            "DHGroup2",
            "DHGroup14",
            "DHGroup2048",
            "ECP256",
            "ECP384",
            "DHGroup24",
        ),
    ),
    "pfsGroup": (
        "PfsGroup",
        _enum("None", "PFS1", "PFS2", "PFS2048", "ECP256", "ECP384", "PFS24", "PFS14", "PFSMM"),
    ),
}
GATEWAY_TYPES = _enum("Vpn", "ExpressRoute", "LocalGateway")
VPN_TYPES = _enum("PolicyBased", "RouteBased")
GATEWAY_SKUS = _enum(
    "Basic",
    "HighPerformance",
    "Standard",
    "UltraPerformance",
    "VpnGw1",
    "VpnGw2",
    "VpnGw3",
    "VpnGw4",
    "VpnGw5",
    "VpnGw1AZ",
    "VpnGw2AZ",
    "VpnGw3AZ",
    "VpnGw4AZ",
    "VpnGw5AZ",
    "ErGw1AZ",
    "ErGw2AZ",
    "ErGw3AZ",
    "ErGwScale",
)
GATEWAY_GENERATIONS = _enum("None", "Generation1", "Generation2")

# NRP's rule for LNG / connection / gateway names ("word character" as in .NET regexes).
NAME_RE = re.compile(r"^\w(?:[\w.-]{0,78}\w)?$")
RESOURCE_GROUP_CHARS = re.compile(r"[^\w.()-]")


def validate_name(name: str) -> None:
    """Raise ``InvalidResourceName`` unless ``name`` follows NRP's naming rule."""
    if not NAME_RE.fullmatch(name):
        raise invalid_resource_name(name)


def validate_resource_group_name(name: str) -> None:
    """Resource group names: letters, digits, ``-._()``, 1-90 chars, not ending in ``.``."""
    bad = "".join(sorted(set(RESOURCE_GROUP_CHARS.findall(name))))
    if bad:
        raise invalid_resource_group_name(name, bad)
    if not 1 <= len(name) <= 90 or name.endswith("."):
        raise ArmError(
            400,
            "InvalidResourceGroup",
            f"The provided resource group name '{name}' is invalid: it must be 1-90 characters "
            "long and must not end with a period.",
        )


def _canonical(
    container: dict[str, Any], key: str, values: dict[str, str], type_name: str, path: str
) -> None:
    """Replace ``container[key]`` by its canonical enum spelling, or raise ARM's parse error."""
    if key not in container or container[key] is None:
        return
    value = container[key]
    canonical = values.get(value.lower()) if isinstance(value, str) else None
    if canonical is None:
        raise invalid_enum_value(value, type_name, f"{path}.{key}")
    container[key] = canonical


def _boolean(container: dict[str, Any], key: str, path: str) -> None:
    value = container.get(key)
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str) and value.lower() in ("true", "false"):
        container[key] = value.lower() == "true"
        return
    raise invalid_enum_value(value, "Boolean", f"{path}.{key}", namespace="System")


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
    _canonical(props, "gatewayType", GATEWAY_TYPES, "VirtualNetworkGatewayType", "properties")
    _canonical(props, "vpnType", VPN_TYPES, "VpnType", "properties")
    _canonical(
        props, "vpnGatewayGeneration", GATEWAY_GENERATIONS, "VpnGatewayGeneration", "properties"
    )
    _boolean(props, "activeActive", "properties")
    _boolean(props, "enableBgp", "properties")
    sku = props.get("sku")
    if sku is not None and not isinstance(sku, dict):
        raise bad_request("sku must be an object.", "InvalidRequestContent")
    if isinstance(sku, dict):
        _canonical(sku, "name", GATEWAY_SKUS, "VirtualNetworkGatewaySkuName", "properties.sku")
        _canonical(sku, "tier", GATEWAY_SKUS, "VirtualNetworkGatewaySkuTier", "properties.sku")
    for key, default in (
        ("gatewayType", "Vpn"),
        ("vpnType", "RouteBased"),
        ("enableBgp", False),
        ("activeActive", False),
        ("sku", {"name": "VpnGw1", "tier": "VpnGw1"}),
    ):
        if props.get(key) is None:
            props[key] = default
    configs = props.setdefault("ipConfigurations", [])
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise bad_request("ipConfigurations must be a list of objects.")
    for index, cfg in enumerate(configs):
        cfg_name = str(cfg.get("name") or f"ipconfig{index + 1}")
        cfg.update(name=cfg_name, id=f"{rid}/ipConfigurations/{cfg_name}", etag=new_etag())
        inner = cfg.setdefault("properties", {})
        if isinstance(inner, dict):
            inner["provisioningState"] = "Succeeded"


def _validate_connection_enums(props: dict[str, Any]) -> None:
    path = "properties"
    _canonical(
        props, "connectionType", CONNECTION_TYPES, "VirtualNetworkGatewayConnectionType", path
    )
    _canonical(
        props,
        "connectionProtocol",
        CONNECTION_PROTOCOLS,
        "VirtualNetworkGatewayConnectionProtocol",
        path,
    )
    _canonical(
        props, "connectionMode", CONNECTION_MODES, "VirtualNetworkGatewayConnectionMode", path
    )
    _canonical(
        props, "authenticationType", AUTHENTICATION_TYPES, "ConnectionAuthenticationType", path
    )
    for flag in ("enableBgp", "usePolicyBasedTrafficSelectors", "useLocalAzureIpAddress"):
        _boolean(props, flag, path)
    policies = props.get("ipsecPolicies")
    if policies is None:
        return
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        raise bad_request("ipsecPolicies must be a list of objects.", "InvalidRequestContent")
    for index, policy in enumerate(policies):
        for key, (type_name, values) in IPSEC_POLICY_ENUMS.items():
            _canonical(policy, key, values, type_name, f"{path}.ipsecPolicies[{index}]")


def validate_connection(
    rid: str, props: dict[str, Any], resources: dict[str, Resource], location: str
) -> str | None:
    """Check and normalise a connection's properties; returns the shared key it carried."""
    _validate_connection_enums(props)
    key = props.pop("sharedKey", None)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
        raise bad_request("sharedKey must be a string of 1-128 characters.", "InvalidSharedKey")
    ctype = props.get("connectionType")
    if ctype is None:
        raise bad_request(
            "connectionType is required and must be one of "
            + ", ".join(CONNECTION_TYPES.values())
            + "."
        )
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
        same_region = prop == "virtualNetworkGateway2" or (
            target is not None and target.location == location
        )
        if target is None or target.provisioning_state == "Deleting" or not same_region:
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
