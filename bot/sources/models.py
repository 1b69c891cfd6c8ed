"""Configuration models of the IP sources, importable without their runtime dependencies.

`bot.config` validates `[[sources]]` tables with `SourceSpec`, so this module imports only
pydantic and the standard library (no aiohttp, no fritzconnection): loading or checking a
config must not pull in the network stack. The runtime modules (`echo`, `fritz`, `debounce`)
re-export the classes they used to define.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from bot.events import SITE_PATTERN
from bot.secrets import read_secret_refs
from bot.sources.ipcheck import Family

ProviderKind = Literal["text", "json", "trace"]
SiteRef = Annotated[str, Field(pattern=SITE_PATTERN)]
SourceName = Annotated[str, Field(min_length=1, max_length=64)]  # becomes Event.source


class DebounceConfig(BaseModel):
    """Stability requirement for a new address; `polls=0, seconds=0` reports immediately.

    With both thresholds set, `combine="all"` (default, conservative) needs both, `"any"`
    needs either.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    polls: int = Field(default=2, ge=0, description="consecutive observations required")
    seconds: float = Field(default=0.0, ge=0.0, description="time the value must persist")
    combine: Literal["all", "any"] = "all"


class EchoProvider(BaseModel):
    """One echo endpoint.

    `text`: the body is the address (ipify/icanhazip style). `json`: the address is the string
    at dotted `json_field` (e.g. `ip` or `data.ip`). `trace`: Cloudflare `/cdn-cgi/trace`
    `key=value` lines, address in `ip=`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    url: AnyHttpUrl
    kind: ProviderKind = "text"
    family: Family = "v4"
    json_field: str = Field(default="ip", min_length=1)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


def effective_quorum(n_providers: int, configured: int | None = None) -> int:
    """Majority of `n_providers` (min 2 when there are 2+), unless explicitly configured."""
    if configured is not None:
        return configured
    if n_providers <= 1:
        return 1
    return max(2, n_providers // 2 + 1)


class EchoConfig(BaseModel):
    """Providers plus agreement rules.

    `quorum=None` means a majority of the providers queried for that family, and at least 2
    when 2 or more are configured. `max_body_bytes` caps what is read from any provider.
    The aiohttp session should pin its connector to the right address family; answers of the
    wrong family are rejected either way.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: tuple[EchoProvider, ...] = Field(min_length=1)
    quorum: int | None = Field(default=None, ge=1)
    max_body_bytes: int = Field(default=1024, ge=64, le=65536)
    allow_documentation: bool = False

    @model_validator(mode="after")
    def _check(self) -> EchoConfig:
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be unique")
        if self.quorum is not None:
            for fam in ("v4", "v6"):
                count = sum(1 for p in self.providers if p.family == fam)
                if count and self.quorum > count:
                    raise ValueError(f"quorum {self.quorum} > {count} IP{fam} providers")
        return self

    def providers_for(self, family: Family) -> tuple[EchoProvider, ...]:
        return tuple(p for p in self.providers if p.family == family)

    def quorum_for(self, family: Family) -> int:
        return effective_quorum(len(self.providers_for(family)), self.quorum)


class FritzConfig(BaseModel):
    """Where the box is and which services to try, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(default="192.168.178.1", min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="49000 / 49443 (TLS)")
    use_tls: bool = False
    username: str = ""
    password: SecretStr = SecretStr("")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="per HTTP request")
    ipv6: bool = True
    allow_documentation: bool = False
    ipv4_services: tuple[str, ...] = ("WANIPConn1", "WANPPPConnection1", "WANIPConnection1")
    ipv6_services: tuple[str, ...] = ("WANIPConn1",)
    link_services: tuple[str, ...] = ("WANCommonIFC1", "WANCommonInterfaceConfig1")


def _v4_only() -> list[Family]:
    return ["v4"]


class EchoSourceConfig(EchoConfig):
    """`[[sources]] kind = "echo"`: poll HTTP echo services from the machine the bot runs on.

    The answer is this machine's public address, so `sites` lists the sites whose internet
    connection this machine uses (normally one). No providers are built in: list them, e.g.

    - `https://api.ipify.org` / `https://api6.ipify.org` (`kind = "text"`)
    - `https://ipv4.icanhazip.com` / `https://ipv6.icanhazip.com` (`kind = "text"`)
    - `https://1.1.1.1/cdn-cgi/trace` / `https://[2606:4700:4700::1111]/cdn-cgi/trace`
      (`kind = "trace"`)

    Each family in `families` needs providers of that family; three per family from different
    operators make the default majority quorum (2) survive one failure or liar.
    """

    kind: Literal["echo"]
    name: SourceName = "echo"
    enabled: bool = True
    sites: list[SiteRef] = Field(min_length=1)
    interval: float = Field(default=300.0, gt=0, description="seconds between polls")
    families: list[Family] = Field(default_factory=_v4_only, min_length=1)
    debounce: DebounceConfig = DebounceConfig()

    @model_validator(mode="after")
    def _families_have_providers(self) -> EchoSourceConfig:
        if len(set(self.families)) != len(self.families):
            raise ValueError("families must not repeat")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("sites must not repeat")
        for family in self.families:
            if not self.providers_for(family):
                raise ValueError(f"family {family!r} is polled but has no IP{family} providers")
        return self


class FritzSourceConfig(FritzConfig):
    """`[[sources]] kind = "fritz"`: poll one FRITZ!Box (TR-064/IGD) for `site`'s address.

    IPv6 is off by default here (as for echo sources): a site's gateway address is usually
    IPv4, and a v6 report is a separate `ip.changed` event. The password comes from the
    environment, `password_file` or `password_env` (``bot.secrets``), never literally from
    the config file.
    """

    kind: Literal["fritz"]
    name: SourceName = "fritz"
    enabled: bool = True
    site: SiteRef
    interval: float = Field(default=60.0, gt=0, description="seconds between polls")
    debounce: DebounceConfig = DebounceConfig()
    ipv6: bool = False

    @model_validator(mode="before")
    @classmethod
    def _read_secret_refs(cls, data: Any) -> Any:
        return read_secret_refs(cls, data)

    @property
    def sites(self) -> list[str]:
        """The one site, so code that walks every source's `sites` treats both kinds alike."""
        return [self.site]


SourceSpec = Annotated[EchoSourceConfig | FritzSourceConfig, Field(discriminator="kind")]
