"""Configuration: one TOML file, validated by pydantic, overridable by environment variables.

Precedence (highest first): ``TUNNELWARDEN_*`` variables (nested keys joined with ``__``, e.g.
``TUNNELWARDEN_WORKER__CONCURRENCY=8``), then the TOML file, then the defaults below.

Secrets are ``SecretStr`` fields. They may come from the environment (the field's own
``TUNNELWARDEN_*`` variable), from a companion ``<name>_file`` key naming a file that holds the
value, or from ``<name>_env`` naming another variable; a secret written literally in the TOML
file is a configuration error, so a config file can be committed or shared without leaking.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.chat.models import ChannelConfig
from bot.chat.roles import RolesConfig

if TYPE_CHECKING:
    from bot.redact import Redactor
from bot.damping import DampingConfig
from bot.events import SITE_PATTERN
from bot.probes.models import ProbeSpec
from bot.secrets import read_secret_refs, secret_fields
from bot.sources.models import SourceSpec

ENV_PREFIX = "TUNNELWARDEN_"
SITE_NAME = re.compile(SITE_PATTERN)


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded Redis keeps its data when ``redis.state_dir`` is not set.

    As a service: ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), else
    ``/var/lib/tunnelwarden`` when running as root with no ``HOME``. Otherwise per user:
    ``$XDG_STATE_HOME/tunnelwarden``, else ``~/.local/state/tunnelwarden``. Never the current
    directory, so ``cd /tmp && tunnelwarden history`` reads the same data as anywhere else.
    """
    env = os.environ if env is None else env
    service = env.get("STATE_DIRECTORY", "").split(":")[0]
    if service:
        return Path(service)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not env.get("HOME"):
        return Path("/var/lib/tunnelwarden")
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "tunnelwarden"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "tunnelwarden"


def _site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise ValueError(
            f"site name {name!r} must be lowercase letters, digits, '-' or '_' (max 63)"
        )
    return name


SiteName = Annotated[str, AfterValidator(_site_name)]


class Section(BaseModel):
    """Base for every config table: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_refs(cls, data: Any) -> Any:
        return read_secret_refs(cls, data)


class RedisConfig(Section):
    url: str = Field(
        "",
        description="redis://, rediss:// (TLS), unix:// or redis+sentinel://; empty = embedded",
    )
    username: str | None = None
    password: SecretStr | None = None
    prefix: str = Field("tw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    stream_maxlen: int = Field(100_000, ge=1000)
    history_maxlen: int = Field(1000, ge=10)
    dead_letter_maxlen: int = Field(10_000, ge=100)
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir(),
        description="embedded Redis data; default: see default_state_dir (relative: to the "
        "config file's folder)",
    )
    tls_ca_file: Path | None = None
    max_connections: int = Field(
        64, ge=4, description="connection pool size; a caller waits for a free connection"
    )
    pool_timeout: float = Field(5.0, gt=0, description="seconds to wait for a free connection")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        schemes = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
        if url and not url.startswith(schemes):
            raise ValueError(f"unsupported scheme; use one of {', '.join(schemes)}")
        return url


class WorkerConfig(Section):
    name: str = Field("", description="consumer name; default host-pid")
    concurrency: int = Field(10, ge=1, le=256)
    visibility_timeout: float = Field(
        30.0, gt=0, description="seconds an unacknowledged entry of a silent worker waits"
    )
    reclaim_interval: float = Field(5.0, gt=0)
    max_deliveries: int = Field(5, ge=1)
    block_ms: int = Field(1000, ge=10)
    grace_period: float = Field(20.0, ge=0)
    idempotency_ttl: int = Field(7 * 24 * 3600, ge=60)
    max_entry_bytes: int = Field(
        256 * 1024, ge=1024, description="larger stream entries are dead-lettered unread"
    )
    max_entry_depth: int = Field(
        32, ge=4, le=1000, description="JSON nested deeper is dead-lettered unparsed"
    )


class Policy(Section):
    """Safety valves; ``[policies]`` sets defaults, ``[sites.X.policy]`` overrides per site."""

    paused: bool = False
    lock_ttl: float = Field(30.0, gt=0)
    lock_wait: float = Field(
        300.0, ge=0, description="how long a requested run waits for a busy site"
    )
    playbook_timeout: float = Field(600.0, gt=0)
    retry_attempts: int = Field(
        3, ge=1, description="plans per playbook in one run: re-read and re-plan after a fault"
    )
    retry_base_delay: float = Field(
        10.0, gt=0, description="first retry of a site whose reconcile failed (doubles)"
    )
    retry_max_delay: float = Field(
        600.0, gt=0, description="cap of the backoff; a longer Retry-After is still honoured"
    )
    max_changes_per_hour: int = Field(6, ge=0)
    allow_destructive: bool = False
    approval: bool = Field(
        False,
        description="a destructive step the handler would take waits for an approver in chat "
        "(unless allow_destructive)",
    )
    tunnel_timeout: float = Field(120.0, ge=0, description="wait this long for Connected")
    tunnel_poll: float = Field(5.0, gt=0)
    max_resets_per_hour: int = Field(
        3, ge=0, description="automatic connection resets per site per hour (0 = no limit)"
    )
    reset_cooldown: float = Field(
        300.0, ge=0, description="after a reset, wait this long before resetting again"
    )
    reset_on_probe_failure: bool = Field(
        True,
        description="reset the connection when a quorum of through-tunnel probes fails while "
        "Azure says Connected (up but passing nothing)",
    )


class SchedulerConfig(Section):
    """The due-time set that brings sites back: retries, the periodic resync, timers."""

    tick: float = Field(1.0, gt=0, le=60, description="how often workers look for due entries")
    resync_interval: float = Field(
        900.0, ge=10, description="every site is re-checked this often (spread evenly)"
    )


FQDN = re.compile(
    r"^(?=.{1,253}\.?$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}\.?$", re.I
)


class PushConfig(Section):
    """dyndns2 credentials a site's router uses to push its new address to us."""

    hostname: str | list[str]
    username: str = Field(min_length=1, max_length=128)
    password: SecretStr

    @field_validator("hostname")
    @classmethod
    def _fqdn(cls, value: str | list[str]) -> str | list[str]:
        for host in [value] if isinstance(value, str) else value:
            if not FQDN.match(host):
                raise ValueError(f"{host!r} is not a fully-qualified domain name")
        return value

    @property
    def hostnames(self) -> list[str]:
        return [self.hostname] if isinstance(self.hostname, str) else list(self.hostname)


DEVICE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class DeviceBase(Section):
    """``[[sites.NAME.devices]]``: the site's own end of the tunnel, reached over its API."""

    name: str = Field(pattern=DEVICE_NAME, description="how playbooks name it (device=NAME)")
    url: str = Field(description="https://host[:port]; plain http only to 127.0.0.1 or ::1")
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = Field(None, description="PEM bundle to trust (self-signed appliances)")
    verify_tls: bool = True
    timeout: float = Field(30.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        from playbooks.devices.common import DeviceConfigError, check_url

        try:
            check_url(value)
        except DeviceConfigError as exc:
            raise ValueError(str(exc)) from None
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value


class SonicWallDevice(DeviceBase):
    kind: Literal["sonicwall"]
    policy: str = Field(min_length=1, max_length=64, description="the site-to-site policy's name")
    auth: Literal["basic", "digest"] = "basic"
    override: bool = Field(
        False,
        description="log in with override, ending any administrator's session (loses their "
        "unsaved work): only for appliances nobody configures by hand",
    )

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if not self.username or self.password is None:
            raise ValueError("a sonicwall device needs username and password (password_env)")
        return self


class BarracudaDevice(DeviceBase):
    kind: Literal["barracuda"]
    token: SecretStr | None = Field(None, description="X-API-Token (or username + password)")
    service: str = Field("VPN", min_length=1, max_length=64, description="the VPN service")

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.token is None and (not self.username or self.password is None):
            raise ValueError("a barracuda device needs token, or username and password")
        return self


class KempDevice(DeviceBase):
    kind: Literal["kemp"]
    api_key: SecretStr | None = Field(None, description="API key (or username + password)")
    api: Literal["v1", "v2"] = Field("v1", description="v1: /access/* (XML), v2: /accessv2")
    virtual_service: str | None = Field(None, description="VIP of the farm's virtual service")
    vs_port: int | None = Field(None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "udp"

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.api_key is None and (not self.username or self.password is None):
            raise ValueError("a kemp device needs api_key, or username and password")
        if (self.virtual_service is None) != (self.vs_port is None):
            raise ValueError("give virtual_service and vs_port together")
        return self


class RrasDevice(DeviceBase):
    """Windows RRAS over WinRM HTTPS (``url`` = https://host:5986) with a JEA endpoint."""

    kind: Literal["rras"]
    interface: str = Field(min_length=1, max_length=64, description="the S2S interface's name")
    auth: Literal["negotiate", "ntlm", "kerberos", "credssp"] = "negotiate"
    configuration_name: str = Field("TunnelWarden", description="the JEA endpoint")
    recording: Path | None = Field(
        None,
        description="replay recorded Get-VpnS2SInterface objects from this JSON file instead "
        "of WinRM (demos and tests; no PSRP server needed)",
    )

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.recording is None and (not self.username or self.password is None):
            raise ValueError("an rras device needs username and password (password_env)")
        return self


DeviceSpec = Annotated[
    SonicWallDevice | BarracudaDevice | KempDevice | RrasDevice, Field(discriminator="kind")
]


class TrafficManagerConfig(Section):
    """``[sites.NAME.traffic_manager]``: the site's endpoint in an Azure Traffic Manager
    profile (multisite AOVPN/DirectAccess): taken out of rotation and put back."""

    resource_group: str = Field(min_length=1, max_length=90)
    profile: str = Field(min_length=1, max_length=63)
    endpoint: str = Field(min_length=1, max_length=260)
    endpoint_type: Literal["ExternalEndpoints", "AzureEndpoints", "NestedEndpoints"] = (
        "ExternalEndpoints"
    )


class FailoverConfig(Section):
    """``[sites.NAME.failover]``: two paths, the probes that judge them, who acts.

    The device fails over by itself (dead peer detection); the bot keeps it from flapping back
    to a half-up primary and fails back when, and only when, the primary is stable
    (``damping``, research §C5).
    """

    actor: Literal["sonicwall", "kemp", "traffic-manager"] = Field(
        description="sonicwall: preempt secondary gateway; kemp: the primary real server; "
        "traffic-manager: the site's endpoint"
    )
    device: str | None = Field(
        None, description="the acting device's name, when the site has several of its kind"
    )
    primary: str = Field(
        min_length=1,
        max_length=260,
        description="sonicwall: the policy's primary gateway address; kemp: the primary real "
        "server's address; traffic-manager: a label (the site's endpoint acts)",
    )
    secondary: str = Field(min_length=1, max_length=260)
    primary_probes: list[str] = Field(min_length=1, description="probes that judge the primary")
    secondary_probes: list[str] = Field(
        default_factory=list,
        description="probes that judge the secondary (no failover to a dead one)",
    )
    quorum: int | None = Field(
        None, ge=1, description="failing primary probes that judge it down (default min(2, n))"
    )
    interval: float | None = Field(
        None, gt=0, description="seconds between samples of a path (default: its probes' least)"
    )
    preempt_interval: int = Field(
        60, ge=1, le=86400, description="sonicwall: preempt interval set while failing back"
    )
    verify_timeout: float = Field(
        180.0, gt=0, le=3600, description="how long a failback waits to see traffic on primary"
    )
    damping: DampingConfig = DampingConfig()

    @property
    def primary_quorum(self) -> int:
        return self.quorum if self.quorum is not None else min(2, len(self.primary_probes))

    @model_validator(mode="after")
    def _quorum_fits(self) -> Self:
        if self.quorum is not None and self.quorum > len(self.primary_probes):
            raise ValueError(
                f"quorum {self.quorum} is more than the {len(self.primary_probes)} primary probes"
            )
        return self


class SiteConfig(Section):
    description: str = ""
    push: PushConfig | None = None
    probes: list[ProbeSpec] = Field(
        default_factory=list, description="[[sites.NAME.probes]]: health probes of the site"
    )
    probe_quorum: int | None = Field(
        None,
        ge=1,
        description="through-tunnel probes that must fail before the site is judged down by "
        "its probes (default 2 where a site has two or more of them, else 1)",
    )
    policy: dict[str, Any] = Field(
        default_factory=dict, description="overrides of [policies] keys for this site"
    )
    devices: list[DeviceSpec] = Field(
        default_factory=list, description="[[sites.NAME.devices]]: the site's own devices"
    )
    traffic_manager: TrafficManagerConfig | None = None
    failover: FailoverConfig | None = None

    @model_validator(mode="after")
    def _probe_names_unique(self) -> SiteConfig:
        for what, names in (
            ("probe", [p.name for p in self.probes]),
            ("device", [d.name for d in self.devices]),
        ):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{what} names must be unique within a site: {', '.join(twice)}")
        return self

    @model_validator(mode="after")
    def _failover_fits(self) -> SiteConfig:
        fo = self.failover
        if fo is None:
            return self
        probes = {p.name for p in self.probes}
        unknown = [n for n in (*fo.primary_probes, *fo.secondary_probes) if n not in probes]
        if unknown:
            raise ValueError(f"failover: unknown probes {', '.join(unknown)} (not in probes)")
        if fo.actor == "traffic-manager":
            if self.traffic_manager is None:
                raise ValueError("failover.actor = 'traffic-manager' needs [traffic_manager]")
        else:
            self.device_for(fo.actor, fo.device, where="failover")
        return self

    def device_for(self, kind: str, name: str | None = None, *, where: str = "") -> DeviceSpec:
        """The site's device of ``kind`` (named ``name`` when it has several); ValueError
        with a one-line reason otherwise."""
        here = f"{where}: " if where else ""
        found = [d for d in self.devices if d.kind == kind]
        if name is not None:
            named = [d for d in self.devices if d.name == name]
            if not named:
                known = ", ".join(d.name for d in self.devices) or "none"
                raise ValueError(f"{here}no device named {name!r} (devices: {known})")
            if named[0].kind != kind:
                raise ValueError(f"{here}device {name!r} is a {named[0].kind}, not a {kind}")
            return named[0]
        if not found:
            raise ValueError(f"{here}no {kind} device in [[devices]]")
        if len(found) > 1:
            names = ", ".join(d.name for d in found)
            raise ValueError(f"{here}several {kind} devices ({names}): name one (device=NAME)")
        return found[0]

    @property
    def quorum(self) -> int:
        """How many through-tunnel probes must fail before the site is judged down by its
        probes (only those count: a plain probe failing is not the tunnel's fault)."""
        if self.probe_quorum is not None:
            return self.probe_quorum
        return 2 if sum(p.through_tunnel for p in self.probes) >= 2 else 1

    @model_validator(mode="after")
    def _probe_quorum_fits(self) -> SiteConfig:
        through = sum(p.through_tunnel for p in self.probes)
        if self.probe_quorum is not None and self.probe_quorum > through:
            raise ValueError(
                f"probe_quorum {self.probe_quorum} is more than the {through} through-tunnel "
                "probes (only probes with through_tunnel = true count)"
            )
        return self

    def warnings(self) -> list[str]:
        """Accepted but questionable settings of the site, as ``key: sentence`` lines."""
        return [
            f"probes.{i} ({spec.name}): {text}"
            for i, spec in enumerate(self.probes)
            for text in spec.warnings()
        ]

    @field_validator("policy")
    @classmethod
    def _policy_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Validated by the one list of policy keys (``Policy``): typos and bad values fail."""
        checked = Policy.model_validate(value)
        return checked.model_dump(include=set(value))

    resource_group: str | None = None
    local_network_gateway: str | None = None
    connection: str | None = None


class WatcherConfig(Section):
    """``[watcher]``: the ARM tunnel watcher (one replica, under the sources' lease)."""

    enabled: bool = True
    interval: float = Field(300.0, gt=0, description="seconds per sweep of every connection")
    read_share: float = Field(
        0.10, gt=0, le=1, description="share of the subscription's ARM read budget to use"
    )
    debounce: float = Field(
        60.0, ge=0, description="a tunnel is reported down after this long not Connected"
    )
    idle_sweeps: int = Field(
        3, ge=1, description="Connected with no bytes moved for this many checks: degraded"
    )


class EntraConfig(Section):
    """Azure Monitor "secure webhook": validate the Entra bearer token too."""

    issuer: str | list[str]
    audience: str | list[str]
    roles: list[str] = ["ActionGroupsSecureWebhook"]
    jwks_url: str | None = Field(
        None, description="e.g. https://login.microsoftonline.com/TENANT/discovery/v2.0/keys"
    )
    jwks_file: Path | None = None

    @model_validator(mode="after")
    def _keys(self) -> EntraConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url or jwks_file")
        return self


class AzureMonitorHook(Section):
    """``POST /hooks/azure-monitor?token=...`` (served when a token is set)."""

    token: SecretStr | None = None
    entra: EntraConfig | None = None


class HooksConfig(Section):
    azure_monitor: AzureMonitorHook = AzureMonitorHook()


class SlackChatConfig(Section):
    """``[chat.slack]``: slash commands and buttons (docs/chat.md)."""

    enabled: bool = False
    mode: Literal["socket", "http"] = Field(
        "socket", description="socket: outbound only (behind NAT); http: POST /chat/slack/events"
    )
    bot_token: SecretStr | None = Field(None, description="xoxb-...: chat.postMessage etc.")
    app_token: SecretStr | None = Field(None, description="xapp-...: Socket Mode only")
    signing_secret: SecretStr | None = Field(None, description="HTTP mode: v0 signatures")
    api_url: str | None = Field(None, description="Web API base (default Slack's; or the sim)")
    channel: str = Field(
        "", description="where the bot posts the approval requests it asks for itself"
    )
    command: str = Field("/tunnelwarden", pattern=r"^/[a-z0-9_-]{1,31}$")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if not self.enabled:
            return self
        need = ["bot_token", "app_token" if self.mode == "socket" else "signing_secret"]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.mode} mode needs {' and '.join(missing)} (_env or _file)")
        return self


class DiscordChatConfig(Section):
    """``[chat.discord]``: interactions at POST /chat/discord/interactions."""

    enabled: bool = False
    application_id: str = Field("", pattern=r"^[0-9]{0,25}$")
    public_key: str = Field("", description="the application's hex Ed25519 key (not a secret)")
    command: str = Field("tunnelwarden", pattern=r"^[a-z0-9_-]{1,32}$")
    api_url: str = Field("https://discord.com/api/v10", description="follow-ups go here")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.enabled:
            if not self.application_id:
                raise ValueError("application_id is required when enabled")
            from bot.chat.verify import load_discord_public_key

            load_discord_public_key(self.public_key)
        return self


class TeamsChatConfig(Section):
    """``[chat.teams]``: an outgoing webhook at POST /chat/teams/outgoing (read-only)."""

    enabled: bool = False
    security_token: SecretStr | None = Field(None, description="base64, shown by Teams")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.enabled and self.security_token is None:
            raise ValueError("security_token is required when enabled (_env or _file)")
        return self


class ChatConfig(Section):
    enabled: bool = Field(True, description="false mutes every [[notify]] channel")
    roles: RolesConfig = RolesConfig()
    slack: SlackChatConfig = SlackChatConfig()
    discord: DiscordChatConfig = DiscordChatConfig()
    teams: TeamsChatConfig = TeamsChatConfig()
    approval_ttl: float = Field(900.0, gt=0, le=86400, description="approval requests expire")


CLOUDS = {
    "public": ("https://management.azure.com", "login.microsoftonline.com"),
    "usgovernment": ("https://management.usgovcloudapi.net", "login.microsoftonline.us"),
    "china": ("https://management.chinacloudapi.cn", "login.chinacloudapi.cn"),
}


class BudgetConfig(Section):
    """``[azure.budget]``: the ARM request budget all replicas share (token buckets in Redis)."""

    enabled: bool = True
    reads: tuple[float, float] = Field((250.0, 25.0), description="bucket size, refill per second")
    writes: tuple[float, float] = Field((200.0, 10.0), description="bucket size, refill per second")
    deletes: tuple[float, float] = Field(
        (200.0, 10.0), description="bucket size, refill per second"
    )
    headroom: float = Field(0.8, gt=0, le=1, description="share of ARM's limits to use at most")
    verify_reserve: float = Field(
        0.05, ge=0, lt=1, description="share of a bucket only restore writes' calls may take"
    )
    sweep_reserve: float = Field(
        0.30, ge=0, lt=1, description="share of a bucket background sweeps never take"
    )
    max_wait: float = Field(
        5.0, ge=0, description="a reconcile's call waits this long for a token, then defers"
    )
    sweep_max_wait: float = Field(60.0, ge=0, description="the same for background sweeps")
    restore_max_wait: float = Field(
        60.0, ge=0, description="the same for a run's reads after its write went out"
    )


class AzureConfig(Section):
    cloud: Literal["public", "usgovernment", "china", "sim"] = "public"
    endpoint: str | None = Field(None, description="ARM endpoint; for sim or a custom cloud")
    subscription_id: str = ""
    tenant_id: str | None = None
    polling_interval: float = Field(5.0, ge=0, description="LRO poll delay without Retry-After")
    request_timeout: float = Field(60.0, gt=0)
    retry_total: int = Field(
        10, ge=0, description="azure-core's HTTP retries (429/5xx/connection; Retry-After)"
    )
    retry_backoff_factor: float = Field(0.8, ge=0)
    retry_backoff_max: float = Field(60.0, gt=0)
    settle_timeout: float = Field(
        180.0, ge=0, description="after a lost operation: wait this long to leave 'Updating'"
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @model_validator(mode="after")
    def _endpoint_for_sim(self) -> AzureConfig:
        if self.cloud == "sim" and not self.endpoint:
            raise ValueError("cloud = 'sim' needs endpoint (e.g. http://127.0.0.1:8443)")
        return self

    @property
    def arm_endpoint(self) -> str:
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return CLOUDS[self.cloud][0]


class DetectConfig(Section):
    allow_documentation: bool | None = Field(
        None,
        description="treat 192.0.2/24, 198.51.100/24, 203.0.113/24 as public addresses "
        "(simulator and demos); default: only when azure.cloud = 'sim'",
    )


class SecurityConfig(Section):
    journal_key: SecretStr | None = Field(
        None,
        description="Fernet keys that encrypt secrets kept in run journals, comma-separated, "
        "newest first (older keys still decrypt: rotation)",
    )

    @field_validator("journal_key")
    @classmethod
    def _fernet_keys(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            from cryptography.fernet import Fernet

            parts = journal_keys(key)
            for i, part in enumerate(parts, 1):
                try:
                    Fernet(part)
                except ValueError:
                    which = f"key {i} of {len(parts)}" if len(parts) > 1 else "it"
                    raise ValueError(
                        f"must be a Fernet key ({which} is not 32 url-safe base64-encoded "
                        "bytes); make one with: tunnelwarden config new-key"
                    ) from None
        return key


def journal_keys(key: SecretStr) -> list[str]:
    """The comma-separated journal keys, newest first."""
    return [part.strip() for part in key.get_secret_value().split(",") if part.strip()]


class HttpConfig(Section):
    """The public listener: router push (/nic/update), later alert hooks and chat."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024, ge=1024)


class AdminConfig(Section):
    """The admin listener: /healthz, /readyz, /metrics, /runs/... (keep it off the internet)."""

    public_url: str | None = Field(
        None,
        description="how people reach this listener (an internal name, or a proxy with auth): "
        "the base of run links in chat messages",
    )
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="0: any free port")
    token: SecretStr | None = Field(
        None, description="if set, /metrics and /runs/... want 'Authorization: Bearer <token>'"
    )


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class NotifyChannel(ChannelConfig):
    """A chat channel (``[[notify]]``); its webhook URL is a secret: ``url_file``/``url_env``.

    For ``kind = "apprise"`` the same ``url`` (and twins) holds one or more apprise URLs.
    """

    @model_validator(mode="before")
    @classmethod
    def _read_secret_refs(cls, data: Any) -> Any:
        return read_secret_refs(cls, data)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    watcher: WatcherConfig = WatcherConfig()
    hooks: HooksConfig = HooksConfig()
    policies: Policy = Policy()
    sites: dict[SiteName, SiteConfig] = {}
    sources: list[SourceSpec] = []
    chat: ChatConfig = ChatConfig()
    notify: list[NotifyChannel] = []
    security: SecurityConfig = SecurityConfig()
    detect: DetectConfig = DetectConfig()
    azure: AzureConfig = AzureConfig()
    http: HttpConfig = HttpConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    @property
    def allow_documentation_ips(self) -> bool:
        flag = self.detect.allow_documentation
        return self.azure.cloud == "sim" if flag is None else flag

    def warnings(self) -> list[str]:
        """Accepted but questionable settings, one ``key path: sentence`` line each (shown by
        ``config check`` and logged at start-up)."""
        return [f"sites.{name}.{line}" for name, s in self.sites.items() for line in s.warnings()]

    def policy_for(self, site: str) -> Policy:
        """The effective policy of a site: defaults with the site's overrides applied."""
        site_cfg = self.sites.get(site)
        if site_cfg is None:
            return self.policies
        return self.policies.model_copy(update=site_cfg.policy)

    def secret_pairs(self) -> list[tuple[str, str]]:
        """(username, secret) pairs the config knows, so HTTP Basic credentials (base64 of
        ``user:secret``) are masked whole wherever they could appear."""
        pairs: list[tuple[str, str]] = []
        for site in self.sites.values():
            if site.push is not None:
                pairs.append((site.push.username, site.push.password.get_secret_value()))
        if self.redis.username and self.redis.password is not None:
            pairs.append((self.redis.username, self.redis.password.get_secret_value()))
        for site in self.sites.values():
            for device in site.devices:
                if device.username and device.password is not None:
                    pairs.append((device.username, device.password.get_secret_value()))
        for source in self.sources:
            user = getattr(source, "username", None)
            password = getattr(source, "password", None)
            if user and password is not None and password.get_secret_value():
                pairs.append((str(user), password.get_secret_value()))
        return pairs

    def redactor(self) -> Redactor:
        """The process's one redactor: every configured secret and credential pair."""
        from bot.redact import Redactor

        return Redactor(self.secret_values(), pairs=self.secret_pairs())

    def secret_values(self) -> list[str]:
        """Every secret in the config, for log and message redaction."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, SecretStr):
                value = obj.get_secret_value()
                if value:
                    found.append(value)
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name))
                for extra in (obj.model_extra or {}).values():
                    walk(extra)
            elif isinstance(obj, dict):
                for item in obj.values():
                    walk(item)
            elif isinstance(obj, list):
                for item in obj:
                    walk(item)

        walk(self)
        return found


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` holds one ``key.path: problem`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The file to read: ``--config``, else ``TUNNELWARDEN_CONFIG``, else none (defaults)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TUNNELWARDEN_CONFIG")
    return Path(env) if env else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    lenient: bool = False,
) -> Settings:
    """Read, merge and validate; raise ``ConfigError`` listing every problem.

    ``lenient`` (read-only commands: history, status, ...): a ``<name>_env`` secret whose
    variable is not set is left out (or, if the secret is required, stands in as a value no
    one can use), so inspecting needs no push, chat or device secrets."""
    file = config_path(path)
    raw: dict[str, Any] = {}
    problems: list[str] = []
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
        problems.extend(_literal_secrets(Settings, raw, ()))
        redis_raw = raw.get("redis")
        state_dir = redis_raw.get("state_dir") if isinstance(redis_raw, dict) else None
        if isinstance(state_dir, str) and state_dir and not Path(state_dir).is_absolute():
            redis_raw["state_dir"] = str(file.resolve().parent / state_dir)  # type: ignore[index]
    if lenient:
        raw = _without_unset_env(raw)
    merged = _deep_merge(raw, dict(overrides or {}))
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        problems.extend(_format_errors(exc))
        raise ConfigError(problems) from None
    problems.extend(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


UNSET_SECRET = "unset-for-read-only-command"


def _without_unset_env(raw: Any) -> Any:
    """``raw`` with each ``x_env`` naming an unset variable replaced by a placeholder ``x``
    (dropped for ``journal_key``, whose value is checked)."""
    if isinstance(raw, list):
        return [_without_unset_env(item) for item in raw]
    if not isinstance(raw, dict):
        return raw
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).removesuffix("_env")
        if name != key and isinstance(value, str) and value not in os.environ:
            if name not in raw and name != "journal_key":
                out[name] = UNSET_SECRET
            continue
        out[key] = _without_unset_env(value)
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]).replace(".[key]", "") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return lines


def _literal_secrets(model: type[BaseModel], raw: Any, loc: tuple[str, ...]) -> Iterator[str]:
    """Secret fields given a literal value in the TOML file."""
    if not isinstance(raw, dict):
        return
    secrets = set(secret_fields(model))
    for key, value in raw.items():
        here = (*loc, str(key))
        if key in secrets and value not in (None, ""):
            hint = f"use {key}_file or {key}_env"
            if not any(part.isdigit() for part in here):  # list items have no variable
                hint = f"set {ENV_PREFIX + '__'.join(here).upper()}, or {hint}"
            yield f"{'.'.join(here)}: secrets must not be written in the config file; {hint}"
            continue
        field = model.model_fields.get(key)
        if field is None:
            continue
        yield from _nested_secrets(field.annotation, value, here)


def _nested_secrets(annotation: Any, value: Any, loc: tuple[str, ...]) -> Iterator[str]:
    args: tuple[Any, ...] = getattr(annotation, "__args__", ())
    if getattr(annotation, "__metadata__", None) is not None:  # Annotated[X, ...]: look at X
        yield from _nested_secrets(args[0], value, loc)
        return
    if (
        isinstance(value, dict)
        and args
        and all(isinstance(a, type) and issubclass(a, BaseModel) for a in args)
    ):  # a union of models (e.g. the kinds of source): the one whose `kind` matches
        kind = value.get("kind")
        for member in args:
            field = member.model_fields.get("kind")
            if field is None or kind in getattr(field.annotation, "__args__", ()):
                yield from _literal_secrets(member, value, loc)
                return
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _literal_secrets(annotation, value, loc)
    elif args and isinstance(value, dict) and len(args) == 2:  # dict[str, Model]
        for name, item in value.items():
            yield from _nested_secrets(args[1], item, (*loc, str(name)))
    elif args and isinstance(value, list):  # list[Model]
        for i, item in enumerate(value):
            yield from _nested_secrets(args[0], item, (*loc, str(i)))


def _cross_checks(settings: Settings) -> list[str]:
    problems = []
    if settings.security.journal_key is None:
        destructive = [n for n in settings.sites if settings.policy_for(n).allow_destructive]
        if settings.policies.allow_destructive or destructive:
            where = ", ".join(f"sites.{n}" for n in destructive) or "policies"
            problems.append(
                f"security.journal_key: required when destructive playbooks are allowed "
                f"({where}: allow_destructive = true); make one with: tunnelwarden config new-key"
            )
    for i, source in enumerate(settings.sources):
        for site_name in source.sites:
            if site_name not in settings.sites:
                problems.append(f"sources.{i}.sites: unknown site {site_name!r}")
    for name in settings.chat.roles.sites:
        if name not in settings.sites:
            problems.append(f"chat.roles.sites.{name}: unknown site {name!r}")
    users: dict[str, str] = {}
    hosts: dict[str, str] = {}
    for name, site in settings.sites.items():
        push = site.push
        if push is None:
            continue
        if push.username in users:
            problems.append(
                f"sites.{name}.push.username: already used by site {users[push.username]}"
            )
        users.setdefault(push.username, name)
        for host in push.hostnames:
            key = host.lower().rstrip(".")
            if key in hosts:
                problems.append(
                    f"sites.{name}.push.hostname: {host} already belongs to site {hosts[key]}"
                )
            hosts.setdefault(key, name)
    return problems
