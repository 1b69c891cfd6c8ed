"""ARM-shaped errors raised by the simulator's world and rendered by the HTTP layer.

The world raises :class:`ArmError` so the same validation serves both the REST
front end and in-process callers; the HTTP layer turns it into ARM's
``{"error": {"code", "message"}}`` body, which the SDK's ``ARMErrorFormat`` parses.
"""

from __future__ import annotations

from typing import Any

RESOURCE_NOT_FOUND_HELP = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"


class ArmError(Exception):
    """An error response as ARM / the Network resource provider would send it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.target = target
        self.details = list(details or [])

    def body(self) -> dict[str, Any]:
        """Return the ARM error envelope."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


def resource_not_found(arm_type: str, name: str, resource_group: str) -> ArmError:
    """ARM's 404 for a missing resource (message text as ARM phrases it)."""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{arm_type}/{name}' under resource group '{resource_group}' "
        f"was not found. {RESOURCE_NOT_FOUND_HELP}",
    )


def resource_group_not_found(resource_group: str) -> ArmError:
    return ArmError(
        404, "ResourceGroupNotFound", f"Resource group '{resource_group}' could not be found."
    )


def subscription_not_found(subscription: str) -> ArmError:
    return ArmError(
        404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found."
    )


def precondition_failed() -> ArmError:
    return ArmError(
        412,
        "PreconditionFailed",
        "The condition specified using HTTP conditional header(s) is not met.",
    )


def bad_request(message: str, code: str = "InvalidRequestFormat") -> ArmError:
    return ArmError(400, code, message)


def another_operation_in_progress(resource_id: str) -> ArmError:
    return ArmError(
        409,
        "AnotherOperationInProgress",
        f"Another operation on this or dependent resource is in progress. To retry later, "
        f"please check the status of the ongoing operation of resource {resource_id}.",
    )


def invalid_resource_name(name: str) -> ArmError:
    """NRP's answer to a name outside its rule (message as NRP phrases it)."""
    return ArmError(
        400,
        "InvalidResourceName",
        f"Resource name {name} is invalid. The name can be up to 80 characters long. It must "
        "begin with a word character, and it must end with a word character or with '_'. The "
        "name may contain word characters or '.', '-', '_'.",
    )


def invalid_enum_value(
    value: Any,
    type_name: str,
    path: str,
    *,
    namespace: str = "Microsoft.WindowsAzure.Networking.Nrp.Frontend.Contract.Csm.Public",
) -> ArmError:
    """NRP's answer to a value its JSON contract cannot convert (e.g. an unknown enum value)."""
    return ArmError(
        400,
        "InvalidRequestFormat",
        "Cannot parse the request.",
        details=[
            {
                "code": "InvalidJson",
                "message": f"Error converting value {_json_repr(value)} to type "
                f"'{namespace}.{type_name}'. Path '{path}'.",
            }
        ],
    )


def _json_repr(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def invalid_resource_group_location(requested: str, existing: str) -> ArmError:
    return ArmError(
        409,
        "InvalidResourceGroupLocation",
        f"Invalid resource group location '{requested}'. The Resource group already exists in "
        f"location '{existing}'.",
    )


def invalid_resource_group_name(name: str, bad: str) -> ArmError:
    return ArmError(
        400,
        "InvalidResourceGroup",
        f"The provided resource group name '{name}' has these invalid characters: '{bad}'. The "
        "name can only be a letter, digit, '-', '.', '(', ')' or '_'.",
    )
