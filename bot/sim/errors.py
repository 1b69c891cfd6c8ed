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
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.target = target

    def body(self) -> dict[str, Any]:
        """Return the ARM error envelope."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
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
