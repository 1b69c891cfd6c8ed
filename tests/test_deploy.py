"""The deploy artefacts: container, compose, Kubernetes, systemd, Grafana and Prometheus.

Everything here runs offline: the Kubernetes manifests are rendered by a small pure-Python
kustomize (the subset the overlays use; compared with the real one where ``kubectl`` or
``kustomize`` is installed) and validated against the schemas that ``kubernetes-validate``
bundles; the systemd unit is checked by ``systemd-analyze verify`` where it is installed.
"""

from __future__ import annotations

import copy
import http.server
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def dev_dependency(module: str, package: str) -> Any:
    """Import a dev dependency: missing, the tests that need it skip, except in CI (CI=true),
    where they fail: the checks must not vanish unnoticed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{package} is a dev dependency: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


yaml = dev_dependency("yaml", "PyYAML")

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = K8S / "overlays"
SYSTEMD_UNIT = DEPLOY / "systemd" / "tunnelwarden.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "config.toml"
CREDENTIALS_DIRECTORY = "/run/credentials/tunnelwarden.service"
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the manifests must be valid for

# name:MAJOR.MINOR.PATCH[-variant][@sha256:digest], or name@sha256:digest
PINNED_IMAGE = re.compile(
    r"^[a-z0-9][a-z0-9./_-]*(:\d+\.\d+\.\d+(-[A-Za-z0-9.]+)*)?(@sha256:[0-9a-f]{64})?$"
)


def is_pinned(image: str) -> bool:
    match = PINNED_IMAGE.match(image)
    return bool(match and (match.group(1) or match.group(3)))


def test_pinned_image_pattern() -> None:
    for good in (
        "python:3.11.14-slim-bookworm",
        "redis:7.4.6-alpine",
        "redis:7.4.6-alpine3.21",
        "tunnelwarden:0.1.0",
        "python@sha256:" + "a" * 64,
        "myregistry.azurecr.io/team/tunnelwarden:1.2.3",
    ):
        assert is_pinned(good), good
    for bad in ("python:3.11-slim", "redis:7-alpine", "redis", "redis:latest", "python:3"):
        assert not is_pinned(bad), bad


# --- container ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def dockerfile_bases() -> list[str]:
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases = []
    for word, rest in dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args.setdefault(name.strip(), value.strip().strip('"'))
        elif word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            if image not in stages:
                bases.append(image)
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    return bases


def test_dockerfile_bases_are_pinned() -> None:
    bases = dockerfile_bases()
    assert bases, "no FROM in deploy/Dockerfile"
    for image in bases:
        assert "$" not in image, f"{image}: an ARG without a default"
        assert is_pinned(image), f"{image}: pin the base by exact version (or digest)"


def test_dockerfile_copies_exist() -> None:
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def test_dockerfile_volume_is_created_and_owned() -> None:
    instructions = dockerfile_instructions()
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0", "USER: numeric and not root (Kubernetes runAsNonRoot)"
    volumes = [rest for word, rest in instructions if word == "VOLUME"]
    assert volumes
    env = dockerfile_env()
    for volume in volumes:
        paths = json.loads(volume) if volume.startswith("[") else volume.split()
        for path in paths:
            index = next(i for i, (w, r) in enumerate(instructions) if w == "VOLUME")
            runs = " ".join(r for w, r in instructions[:index] if w == "RUN")
            owned = re.search(rf"install\s+-d\s+-o\s+{uid}\b[^&;]*\s{re.escape(path)}\b", runs) or (
                f"mkdir -p {path}" in runs and re.search(rf"chown[^&;]*{uid}[^&;]*{path}", runs)
            )
            assert owned, f"VOLUME {path}: create it and chown it to {uid} before VOLUME"
            assert env.get("TUNNELWARDEN_REDIS__STATE_DIR") == path, (
                "the embedded Redis's state dir should be the volume"
            )


def test_dockerfile_healthcheck_follows_the_admin_port() -> None:
    checks = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].partition("CMD")[2]
    assert "tunnelwarden-healthcheck" in command
    assert not re.search(r"\b(8080|9108)\b", command), "no hard-coded port in the healthcheck"
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY"]
    assert any(c.split() == ["deploy/healthcheck.py", "/usr/local/bin/tunnelwarden-healthcheck"]
               for c in copies)  # fmt: skip
    assert dockerfile_env()["TUNNELWARDEN_ADMIN__PORT"] == "9108"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELWARDEN_")}
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={**clean, **env},
        capture_output=True,
        timeout=30,
    )
    return result.returncode


def test_healthcheck_script_reads_the_admin_port(
    admin_server: http.server.ThreadingHTTPServer,
) -> None:
    port = str(admin_server.server_address[1])
    assert run_healthcheck({"TUNNELWARDEN_ADMIN__PORT": port}) == 0
    for wildcard in ("0.0.0.0", "::"):  # a wildcard listener is reached on loopback
        assert (
            run_healthcheck(
                {"TUNNELWARDEN_ADMIN__PORT": port, "TUNNELWARDEN_ADMIN__HOST": wildcard}
            )
            == 0
        )
    _Health.status = 503
    try:
        assert run_healthcheck({"TUNNELWARDEN_ADMIN__PORT": port}) == 1
    finally:
        _Health.status = 200
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        unused = str(free.getsockname()[1])
    assert run_healthcheck({"TUNNELWARDEN_ADMIN__PORT": unused}) == 1


# --- compose --------------------------------------------------------------------------------


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, with ``env`` or the defaults."""
    env = env or {}

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"<required {name}>"
        return ""

    return re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", value, text)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env))
    return data


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_config_file() -> Path:
    """The host file compose mounts at the path the bot's --config names."""
    bot = compose()["services"]["tunnelwarden"]
    command = bot["command"]
    target = command[command.index("--config") + 1]
    for volume in bot["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"compose mounts nothing at {target}")


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        if "image" in service:
            assert is_pinned(service["image"]), f"{name}: {service['image']} is a floating tag"
        else:
            assert "build" in service, f"{name}: neither image nor build"


def test_compose_mounted_paths_exist() -> None:
    data = compose()
    named = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, not in the repo"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        for env_file in service.get("env_file", []):
            assert (DEPLOY / env_file).exists(), f"{name}: env_file {env_file}"


def config_env_references(data: Any) -> set[str]:
    """Every variable an ``x_env`` key of the (parsed) config names."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("_env") and isinstance(value, str):
                found.add(value)
            found |= config_env_references(value)
    elif isinstance(data, list):
        for item in data:
            found |= config_env_references(item)
    return found


def test_compose_passes_every_variable_the_config_reads() -> None:
    config = compose_config_file()
    assert config.is_file()
    needed = config_env_references(tomllib.loads(config.read_text()))
    assert needed, f"{config.name} reads no variable: the check would be empty"
    env = compose_environment(compose()["services"]["tunnelwarden"])
    missing = needed - set(env)
    assert not missing, f"compose does not pass {sorted(missing)} that {config.name} reads"
    # ...and they must be set by the operator (compose fails fast without them)
    for name in needed:
        assert env[name] == f"<required {name}>", f"{name}: use ${{{name}:?...}}"


def dummy_secret(name: str) -> str:
    """A stand-in value of the right shape for the secret ``name`` (a variable or file)."""
    if "journal" in name.lower():
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    if "url" in name.lower():
        return "https://hooks.example.invalid/services/T0/B0/x"
    return "a-secret-value"


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TUNNELWARDEN_"):
            monkeypatch.delenv(name)


def load(path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from bot.config import load_config

    clean_environment(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_config(path)


def test_compose_config_loads_with_what_compose_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    bot = compose()["services"]["tunnelwarden"]
    env = {**dockerfile_env(), **compose_environment(bot)}
    env = {k: (dummy_secret(k) if v.startswith("<required") else v) for k, v in env.items()}
    settings = load(compose_config_file(), env, monkeypatch)
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.admin.host == "0.0.0.0"


def test_compose_healthcheck_and_admin_port() -> None:
    for override in (None, {"TUNNELWARDEN_ADMIN__PORT": "9200"}):
        bot = compose(override)["services"]["tunnelwarden"]
        check = " ".join(bot["healthcheck"]["test"])
        assert "tunnelwarden-healthcheck" in check
        assert not re.search(r"\b(8080|9108)\b", check), "no hard-coded port in the healthcheck"
        port = compose_environment(bot)["TUNNELWARDEN_ADMIN__PORT"]
        admin = [p for p in bot["ports"] if str(p).startswith("127.0.0.1:")]
        assert len(admin) == 1, "the admin port is published on the host's loopback only"
        assert str(admin[0]).rsplit(":", 1)[1] == port, "publish the port the bot listens on"
    redis = compose()["services"]["redis"]
    assert "--appendonly" in redis["command"]


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="docker compose is not installed here: the compose file is checked by the tests above",
)
def test_compose_config_renders() -> None:  # pragma: no cover - where compose exists
    env = {**os.environ, "HOME_PUSH_PASSWORD": "x", "SLACK_WEBHOOK_URL": "y"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_secrets_folder_ships_no_secrets() -> None:
    folder = DEPLOY / "secrets"
    assert (folder / "README.md").is_file()
    assert "*" in (folder / ".gitignore").read_text().split()
    if shutil.which("git") is None:
        return
    tracked = subprocess.run(
        ["git", "ls-files", str(folder)], cwd=REPO, capture_output=True, text=True
    )
    if tracked.returncode == 0:
        names = {Path(line).name for line in tracked.stdout.split()}
        assert names <= {"README.md", ".gitignore"}, f"secrets in git: {names}"


# --- Kubernetes -----------------------------------------------------------------------------

KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# strategic-merge keys of the lists the overlays patch (as Kubernetes defines them)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        here = target.get(key)
        if isinstance(value, dict) and isinstance(here, dict):
            strategic_merge(here, value)
        elif isinstance(value, list) and isinstance(here, list) and key in MERGE_KEYS:
            merge_key = MERGE_KEYS[key]
            added = []
            for item in value:
                match = next((x for x in here if x.get(merge_key) == item.get(merge_key)), None)
                if match is None:
                    added.append(copy.deepcopy(item))
                else:
                    strategic_merge(match, item)
            here[:0] = added  # as kustomize does: new items first
        else:
            target[key] = copy.deepcopy(value)


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The subset of kustomize the manifests use: resources, patches (strategic merge by
    path), images, namespace."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZE_KEYS
    assert not unknown, f"{directory}: kustomization keys {unknown} not rendered by this test"
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        assert path.exists(), f"{directory}/kustomization.yaml: {resource} does not exist"
        docs += kustomize(path) if path.is_dir() else load_documents(path)
    for patch in spec.get("patches", []):
        assert set(patch) == {"path"}, f"{directory}: only path patches are rendered here"
        path = directory / patch["path"]
        assert path.is_file(), f"{directory}/kustomization.yaml: {patch['path']} does not exist"
        for change in load_documents(path):
            targets = [
                d
                for d in docs
                if d["kind"] == change["kind"]
                and d["metadata"]["name"] == change["metadata"]["name"]
            ]
            assert len(targets) == 1, f"{path}: patches no single resource"
            strategic_merge(targets[0], {k: v for k, v in change.items() if k != "metadata"})
    for image in spec.get("images", []):
        for doc in docs:
            for container in pod_containers(doc):
                name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def bot_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "tunnelwarden")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "tunnelwarden")


OVERLAY_NAMES = sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir())


def test_two_overlays_on_one_base() -> None:
    assert OVERLAY_NAMES == ["external-redis", "in-cluster-redis"]
    for name in OVERLAY_NAMES:
        spec = yaml.safe_load((OVERLAYS / name / "kustomization.yaml").read_text())
        assert "../../base" in spec["resources"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(OVERLAYS / name) for name in OVERLAY_NAMES}


def _real_kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(
    _real_kustomize() is None,
    reason="neither kustomize nor kubectl is installed: the pure-Python rendering stands alone",
)
@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_pure_python_rendering_matches_kustomize(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    command = _real_kustomize()
    assert command is not None
    result = subprocess.run(
        [*command, str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

    def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(rendered[overlay]) == keyed([d for d in yaml.safe_load_all(result.stdout) if d])


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return dev_dependency("kubernetes_validate", "kubernetes-validate")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the network during validation fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def test_validator_bundles_its_schemas(kubernetes_validate: Any, offline: None) -> None:
    from importlib.resources import files

    schemas = files("kubernetes_validate") / "kubernetes-json-schema"
    version = f"v{KUBERNETES_VERSION}-local-strict"
    assert (schemas / version / "deployment-apps-v1.json").is_file(), (
        f"kubernetes-validate lacks the {KUBERNETES_VERSION} schemas: upgrade it"
    )
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "two", "selector": {}, "template": {}, "unknownField": 1},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_rendered_overlay_validates(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], kubernetes_validate: Any, offline: None
) -> None:
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path: Path, kubernetes_validate: Any, offline: None) -> None:
    docs = load_documents(path)
    assert docs
    for doc in docs:
        if path.name.endswith("-patch.yaml"):  # a partial Deployment: check what is there
            full = one(kustomize(OVERLAYS / path.parent.name), doc["kind"], doc["metadata"]["name"])
            kubernetes_validate.validate(full, KUBERNETES_VERSION, strict=True)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_replicas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    single = one(rendered["in-cluster-redis"], "Deployment", "tunnelwarden")
    assert single["spec"]["replicas"] == 1
    several = one(rendered["external-redis"], "Deployment", "tunnelwarden")
    assert several["spec"]["replicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_probes_and_services_on_the_right_ports(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    container = bot_container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == int(env["TUNNELWARDEN_ADMIN__PORT"])
    assert ports["http"] == int(env["TUNNELWARDEN_HTTP__PORT"])
    assert env["TUNNELWARDEN_ADMIN__HOST"] == env["TUNNELWARDEN_HTTP__HOST"] == "0.0.0.0"

    def probe_port(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(ports.get(port, port))

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in container:
            assert probe_port(container[kind]) == ports["admin"], kind

    targets = {}
    for service in by_kind(docs, "Service"):
        if service["spec"]["selector"] == {"app.kubernetes.io/name": "tunnelwarden"}:
            (port,) = service["spec"]["ports"]
            targets[port["targetPort"]] = service["metadata"]["name"]
    assert set(targets) == {"http", "admin"}, "one Service per listener"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_hardening(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[overlay]
    for workload in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet")]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[part]), f"{where}: {part}"
            for mount in container.get("volumeMounts", []):
                if mount.get("readOnly"):
                    continue
                writable = claims | {n for n, v in volumes.items() if "emptyDir" in v}
                assert mount["name"] in writable, f"{where}: {mount['mountPath']} is not writable"
    container = bot_container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pod = one(docs, "Deployment", "tunnelwarden")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (env["TUNNELWARDEN_REDIS__STATE_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], f"{path}: an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_disruption_budget_and_network_policy(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    deployment = one(docs, "Deployment", "tunnelwarden")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", "tunnelwarden")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    replicas = deployment["spec"]["replicas"]
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < replicas, "the budget would block every drain"

    ports = {p["name"]: p["containerPort"] for p in bot_container(docs)["ports"]}
    policy = one(docs, "NetworkPolicy", "tunnelwarden")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert set(rules) == {ports["http"], ports["admin"]}
    assert "from" not in rules[ports["http"]], "the public port is open to anyone"
    peers = rules[ports["admin"]]["from"]
    assert peers, "the admin port must name who may connect"
    for peer in peers:
        if "namespaceSelector" in peer:
            assert peer["namespaceSelector"].get("matchLabels"), "not every namespace"
        else:
            assert set(peer) == {"podSelector"}, "same namespace only"


def secret_examples() -> dict[str, dict[str, str]]:
    docs = load_documents(K8S / "secrets.example.yaml")
    return {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_config_and_secrets_wiring(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip

    docs = rendered[overlay]
    container = bot_container(docs)
    pod = one(docs, "Deployment", "tunnelwarden")["spec"]["template"]["spec"]
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    text = configmap["data"][config_path.name]

    examples = secret_examples()
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["key"] in examples.get(ref["name"], {}), (
                f"{item['name']}: secret {ref['name']}/{ref['key']} is not in secrets.example.yaml"
            )
            if item["name"] == "TUNNELWARDEN_REDIS__URL":
                env[item["name"]] = "rediss://:secret@example.redis.cache.windows.net:6380/0"
            else:
                env[item["name"]] = dummy_secret(item["name"])
        else:
            env[item["name"]] = "from-the-pod"
    missing = config_env_references(tomllib.loads(text)) - set(env)
    assert not missing, f"the Deployment does not provide {sorted(missing)}"
    assert "TUNNELWARDEN_REDIS__URL" in env, "the overlay names the Redis"

    config = tmp_path / "config.toml"
    config.write_text(text)
    settings = load(config, env, monkeypatch)
    assert settings.redis.url
    assert settings.admin.port == int(env["TUNNELWARDEN_ADMIN__PORT"])


def test_in_cluster_redis_is_persistent(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["in-cluster-redis"]
    url = next(e for e in bot_container(docs)["env"] if e["name"] == "TUNNELWARDEN_REDIS__URL")
    host = re.match(r"redis://([^:/]+):(\d+)/", url["value"])
    assert host, url
    service = one(docs, "Service", host.group(1))
    assert service["spec"]["ports"][0]["port"] == int(host.group(2))
    redis = one(docs, "StatefulSet", host.group(1))
    assert redis["spec"]["template"]["metadata"]["labels"].items() >= (
        service["spec"]["selector"].items()
    )
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert is_pinned(container["image"])
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in container["volumeMounts"]


def test_external_redis_url_comes_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    env = bot_container(rendered["external-redis"])["env"]
    url = next(e for e in env if e["name"] == "TUNNELWARDEN_REDIS__URL")
    ref = url["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional"), "without the URL the bot would start a private Redis"
    assert not by_kind(rendered["external-redis"], "StatefulSet")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_kubernetes_images_are_pinned(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for doc in rendered[overlay]:
        for container in pod_containers(doc):
            assert is_pinned(container["image"]), container["image"]


# --- systemd --------------------------------------------------------------------------------


def unit_settings() -> list[tuple[str, str]]:
    out = []
    for line in SYSTEMD_UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def test_systemd_unit_is_sandboxed() -> None:
    settings = unit_settings()
    values = dict(settings)
    assert values["DynamicUser"] == "yes"
    assert values["ProtectSystem"] == "strict"
    assert values["NoNewPrivileges"] == "yes"
    assert values["StateDirectory"] == "tunnelwarden"
    environment = " ".join(v for k, v in settings if k == "Environment")
    assert "TUNNELWARDEN_REDIS__STATE_DIR=/var/lib/tunnelwarden" in environment
    assert any(k == "LoadCredential" for k, _ in settings)
    assert "$CREDENTIALS_DIRECTORY" in SYSTEMD_UNIT.read_text()  # documented


def test_systemd_config_reads_the_loaded_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    credentials = {
        value.split(":", 1)[0] for key, value in unit_settings() if key == "LoadCredential"
    }
    text = SYSTEMD_CONFIG.read_text()
    raw = tomllib.loads(text)
    assert not config_env_references(raw), "under systemd secrets come as credentials"
    used = set(re.findall(rf'"{re.escape(CREDENTIALS_DIRECTORY)}/([^"]+)"', text))
    active = {Path(v).name for v in _file_values(raw) if v.startswith(CREDENTIALS_DIRECTORY + "/")}
    assert active, "the config reads no credential"
    assert active <= credentials, f"not loaded by the unit: {sorted(active - credentials)}"
    assert active <= used
    for name in credentials:
        (tmp_path / name).write_text(dummy_secret(name) + "\n")
    config = tmp_path / "config.toml"
    config.write_text(text.replace(CREDENTIALS_DIRECTORY, str(tmp_path)))
    settings = load(config, {}, monkeypatch)
    assert settings.security.journal_key is not None


def _file_values(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            yield from _file_values(value)
    elif isinstance(data, list):
        for item in data:
            yield from _file_values(item)


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed on this machine, so the unit is not verified here",
)


def unit_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointing at a stub (verify wants an existing executable)."""
    (start,) = [v for k, v in unit_settings() if k == "ExecStart"]
    binary = start.split()[0]
    stub = tmp_path / "tunnelwarden"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(SYSTEMD_UNIT.read_text().replace(binary, str(stub)))
    return unit


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = unit_copy(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    complaints = [line for line in output.splitlines() if unit.name in line]
    assert not complaints, "\n".join(complaints)


@needs_systemd_analyze
def test_systemd_exposure(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = unit_copy(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security analysis (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


# --- Grafana and Prometheus -----------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "le",
}  # fmt: skip


def exposed_metric_names() -> set[str]:
    """The sample names bot/metrics.py exposes (counters get _total, histograms _bucket...)."""
    from bot.metrics import Metrics

    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "enum": ("",),
    }
    for family in Metrics().registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings, label matchers, grouping labels and
    durations removed; what remains that is not a function or keyword is a metric)."""
    assert expr.count("(") == expr.count(")"), f"unbalanced parentheses: {expr}"
    assert expr.count("{") == expr.count("}"), f"unbalanced braces: {expr}"
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($__rate_interval, $job)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or word.lower() in {"e"}:
            continue
        names.add(word)
    return names


def test_promql_parser() -> None:
    expr = (
        'sum by (outcome) (increase(tunnelwarden_runs_total{outcome=~"failed|x"}[5m])) > 0 '
        "and on (job) max without (le) (histogram_quantile(0.9, rate(a_bucket[$__rate_interval])))"
    )
    assert promql_metrics(expr) == {"tunnelwarden_runs_total", "a_bucket"}
    assert promql_metrics("label_values(tunnelwarden_tunnel_up, site)") == {
        "tunnelwarden_tunnel_up",
        "site",
    }


def grafana_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "tunnelwarden.json").read_text())
    queries: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner, query
            queries.append((f"variable {variable['name']}", inner.group(1)))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_dashboard_structure() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tunnelwarden.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and "datasource" in variables
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used.startswith("__") or used in variables, (panel["title"], used)


def test_alert_rules_structure() -> None:
    rules = alert_rules()
    assert rules
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smhdw])+", rule["for"]), rule["for"]


def test_every_metric_used_exists() -> None:
    exposed = exposed_metric_names()
    used: dict[str, set[str]] = {}
    for where, expr in grafana_queries():
        names = promql_metrics(expr)
        if where.startswith("variable"):
            names = {n for n in names if n.startswith("tunnelwarden_")}
        assert names, f"{where}: no metric in {expr}"
        used[where] = names
    for rule in alert_rules():
        names = promql_metrics(str(rule["expr"]))
        assert names, rule["alert"]
        used[rule["alert"]] = names
    unknown = {where: names - exposed for where, names in used.items() if names - exposed}
    assert not unknown, f"metrics not defined in bot/metrics.py: {unknown}"


def test_dashboard_covers_the_operators_questions() -> None:
    dashboard_metrics = set().union(*(promql_metrics(e) for _, e in grafana_queries()))
    alert_metrics = set().union(*(promql_metrics(str(r["expr"])) for r in alert_rules()))
    wanted = {
        "tunnelwarden_queue_lag",  # queue lag
        "tunnelwarden_runs_total",  # runs by outcome
        "tunnelwarden_tunnel_up",  # tunnel state
        "tunnelwarden_probe_up",  # probe state
        "tunnelwarden_dead_letters_total",  # dead letters
        "tunnelwarden_dead_letter_entries",
        "tunnelwarden_redis_up",
    }
    assert wanted <= dashboard_metrics, wanted - dashboard_metrics
    assert wanted <= alert_metrics, wanted - alert_metrics
    # An ARM budget metric, once bot/metrics.py has one, belongs on the dashboard too.
    budget = {
        n
        for n in exposed_metric_names()
        if ("budget" in n or "_arm_" in n) and not n.endswith("_created")
    }
    assert budget <= dashboard_metrics, f"add {sorted(budget - dashboard_metrics)} to the dashboard"


# --- docs -----------------------------------------------------------------------------------


def test_operations_doc_points_at_existing_files() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    for heading in ("Running on Kubernetes", "Running under systemd"):
        assert f"## {heading}" in text
    paths = set(re.findall(r"`(deploy/[A-Za-z0-9_./-]+)`", text))
    assert {"deploy/systemd/tunnelwarden.service", "deploy/kubernetes/base"} <= paths
    for path in paths:
        assert (REPO / path).exists(), f"docs/operations.md names {path}, which does not exist"
