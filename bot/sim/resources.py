"""ARM resource records and id helpers for the three Microsoft.Network types we simulate."""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ID_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.Network/(?P<type>[^/]+)/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)


class Kind(StrEnum):
    LNG = "localNetworkGateways"
    CONNECTION = "connections"
    VNG = "virtualNetworkGateways"

    @property
    def arm_type(self) -> str:
        return f"Microsoft.Network/{self.value}"

    @classmethod
    def parse(cls, segment: str) -> Kind | None:
        for kind in cls:
            if kind.value.lower() == segment.lower():
                return kind
        return None


def make_id(subscription: str, resource_group: str, kind: Kind, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Network/{kind.value}/{name}"
    )


def parse_id(resource_id: str) -> tuple[str, str, Kind, str] | None:
    """Split a resource id into (subscription, group, kind, name); None if not ours."""
    m = ID_RE.match(resource_id)
    if not m:
        return None
    kind = Kind.parse(m["type"])
    if kind is None:
        return None
    return m["sub"], m["rg"], kind, m["name"]


def new_etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def normalize_location(location: str) -> str:
    """ARM stores regions lower-case without spaces ("Central US" -> "centralus")."""
    return location.replace(" ", "").lower()


@dataclass
class Resource:
    """One stored resource; ``properties`` holds the writable ARM properties only."""

    id: str
    kind: Kind
    location: str
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    etag: str = field(default_factory=new_etag)
    resource_guid: str = field(default_factory=lambda: str(uuid.uuid4()))
    provisioning_state: str = "Succeeded"
    shared_key: str | None = None  # connections only; never rendered (write-only)

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def name(self) -> str:
        return self.id.rsplit("/", 1)[-1]

    @property
    def subscription(self) -> str:
        return self.id.split("/")[2]

    @property
    def resource_group(self) -> str:
        return self.id.split("/")[4]

    def ref(self, prop: str) -> str | None:
        """Lower-cased id of a referenced resource (``{"id": …}`` property)."""
        value = self.properties.get(prop)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"]).lower()
        return None

    def render(self, extra_properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ARM JSON representation."""
        props: dict[str, Any] = {
            "provisioningState": self.provisioning_state,
            "resourceGuid": self.resource_guid,
        }
        props.update(copy.deepcopy(self.properties))
        props.update(extra_properties or {})
        body: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "etag": self.etag,
            "type": self.kind.arm_type,
            "location": self.location,
        }
        if self.tags:
            body["tags"] = dict(self.tags)
        body["properties"] = props
        return body


def collection_id(subscription: str, resource_group: str, kind: Kind) -> str:
    """The path of a resource collection (the counter key of its LIST requests)."""
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Network/{kind.value}"
    )


def resource_group_id(subscription: str, resource_group: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
