"""docker-compose.yml, deploy/ and the Dockerfile agree with each other and with the code.

No Docker engine runs here, so the compose stack is never started by the tests; these checks
read the files (and let the real nats-server parse its configs with `-t`) and fail with a
message naming the file and the fix.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from paymesh.chassis.nats_creds import OPERATOR_CREDS_ENV, public_key
from paymesh.ops import services as mesh
from paymesh.ops.nats_auth import OPERATOR, authorization, creds_variable, users
from paymesh.ops.natsserver import nats_server_binary
from webhook_svc.service import ALLOW_PRIVATE_ENV, env_flag

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_PY = ROOT / "paymesh" / "chassis" / "config.py"
# Where settings are read: the chassis' config, and each service's own settings in its service.py.
SETTINGS_SOURCES = [CONFIG_PY, *(ROOT / s.name / "service.py" for s in mesh.SPECS)]
HEALTH_MODULE = "paymesh.ops.healthcheck"
REPLICAS = 2
WILDCARD_HOSTS = {"0.0.0.0", "[::]", "::"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
NATS_CREDS_DIR = ROOT / "deploy" / "nats" / "creds"


# --- reading the files ---------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_]\w*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (`${VAR}`, `${VAR:-default}`, `$$`), on every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else current  # type: ignore[return-value]
        if op in (":?", "?"):
            assert current, f"docker-compose.yml requires ${name} to be set ({arg})"
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _VAR.sub(sub, value)


def load_compose() -> dict[str, Any]:
    # An empty environment: the defaults written in the file are what is checked.
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env={})


@dataclass(frozen=True)
class Dockerfile:
    base: str
    user: str | None
    entrypoint: list[str]
    cmd: list[str]
    runs: list[str]
    copies: list[list[str]]


def read_dockerfile() -> Dockerfile:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    base, user = "", None
    entrypoint: list[str] = []
    cmd: list[str] = []
    runs: list[str] = []
    copies: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM" and not base:
            base = rest.split()[0]
        elif word == "USER":
            user = rest
        elif word in ("ENTRYPOINT", "CMD"):
            try:
                argv = json.loads(rest)
            except json.JSONDecodeError:
                pytest.fail(f"Dockerfile: write {word} in exec form (a JSON array), not `{rest}`")
            if word == "ENTRYPOINT":
                entrypoint = argv
            else:
                cmd = argv
        elif word == "RUN":
            runs.append(rest)
        elif word == "COPY":
            copies.append([a for a in rest.split() if not a.startswith("--")])
    return Dockerfile(base, user, entrypoint, cmd, runs, copies)


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_of(svc: dict[str, Any], image: Dockerfile) -> list[str]:
    def as_list(v: Any) -> list[str]:
        return shlex.split(v) if isinstance(v, str) else list(v)

    entrypoint = as_list(svc["entrypoint"]) if "entrypoint" in svc else image.entrypoint
    command = as_list(svc["command"]) if "command" in svc else image.cmd
    return entrypoint + command


def module_of(argv: list[str]) -> str | None:
    """`python -m MODULE ...` -> MODULE."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def replicas_of(svc: dict[str, Any]) -> int:
    return int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: str
    target: int


def ports_of(svc: dict[str, Any]) -> list[Port]:
    out = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            out.append(Port(str(entry.get("host_ip", "")), str(entry.get("published", "")), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append(Port(parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            out.append(Port("", parts[0], int(parts[1])))
        else:
            out.append(Port("", "", int(parts[0])))
    return out


def volumes_of(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount."""
    out = []
    for entry in svc.get("volumes") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            parts = str(entry).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def healthcheck_argv(name: str, svc: dict[str, Any]) -> list[str]:
    check = svc.get("healthcheck")
    assert check and not check.get("disable"), f"docker-compose.yml: service {name} needs a healthcheck"
    test = check.get("test")
    assert isinstance(test, list) and test and test[0] == "CMD", (
        f"docker-compose.yml: {name}'s healthcheck.test should be a list [\"CMD\", ...] "
        f"(no shell needed), got {test!r}"
    )
    return [str(a) for a in test[1:]]


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    assert sep and port.isdigit(), f"{addr!r} is not HOST:PORT"
    return host, int(port)


# --- what the code reads -----------------------------------------------------------------


def env_vars_config_reads() -> set[str]:
    """Every variable name paymesh/chassis/config.py and the services' service.py read, found in their
    source: `env.get(NAME...)` and `env_int/env_float(env, NAME, ...)`, with `f"{spec.env_prefix}_X"`
    expanded over the services' prefixes."""
    prefixes = [s.env_prefix for s in mesh.SPECS]
    names: set[str] = set()

    constants: dict[str, str] = {}  # module-level NAME = "..." of the sources, for env.get(NAME)

    def add(node: ast.expr) -> None:
        if isinstance(node, ast.Name) and node.id in constants:
            names.add(constants[node.id])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.JoinedStr):
            parts = node.values
            if (len(parts) == 2 and isinstance(parts[0], ast.FormattedValue)
                    and isinstance(parts[1], ast.Constant) and isinstance(parts[1].value, str)):
                names.update(prefix + parts[1].value for prefix in prefixes)

    trees = [ast.parse(path.read_text()) for path in SETTINGS_SOURCES]
    for tree in trees:
        for stmt in tree.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                constants[stmt.targets[0].id] = stmt.value.value
    for node in (n for tree in trees for n in ast.walk(tree)):
        # A variable name made first and read later (`cert_var = f"{env_prefix}_TLS_CERT"`).
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            for element in node.value.elts:
                if isinstance(element, ast.JoinedStr):
                    add(element)
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name) \
                and func.value.id == "env" and node.args:
            add(node.args[0])
        elif isinstance(func, ast.Name) and func.id in ("env_int", "env_float") and len(node.args) >= 2:
            add(node.args[1])
    return names


# --- the stack, classified ---------------------------------------------------------------


# The one-shot job that makes the shared streams as the operator before the services start.
NATS_SETUP_MODULE = "paymesh.ops.nats_setup"
# The one-shot job that makes the mesh's CA and certificates (as `paymesh up --tls`) before the services start.
TLS_SETUP_MODULE = "paymesh.ops.tls"


@dataclass(frozen=True)
class Stack:
    services: dict[str, dict[str, Any]]
    image: Dockerfile
    paymesh: dict[str, str]  # compose service -> paymesh service it runs (order_svc, ...)
    nats: list[str]
    postgres: list[str]
    setup: list[str]  # the services running NATS_SETUP_MODULE
    tls_setup: list[str]  # the services running TLS_SETUP_MODULE


@pytest.fixture(scope="module")
def stack() -> Stack:
    compose = load_compose()
    services = compose["services"]
    image = read_dockerfile()
    built_images = {svc.get("image") for svc in services.values() if "build" in svc}
    paymesh: dict[str, str] = {}
    setup: list[str] = []
    tls_setup: list[str] = []
    for name, svc in services.items():
        if "build" in svc or (svc.get("image") and svc.get("image") in built_images):
            module = module_of(argv_of(svc, image))
            if module == NATS_SETUP_MODULE:
                setup.append(name)
                continue
            if module == TLS_SETUP_MODULE:
                tls_setup.append(name)
                continue
            assert module in mesh.NAMES, (
                f"docker-compose.yml: {name} runs the paymesh image with `{' '.join(argv_of(svc, image))}`; "
                f"its command should name one of {sorted(mesh.NAMES)} (run as `python -m <service>`) "
                f"or {NATS_SETUP_MODULE} or {TLS_SETUP_MODULE}"
            )
            paymesh[name] = module
    nats = sorted(n for n, s in services.items() if str(s.get("image", "")).startswith("nats:"))
    postgres = sorted(n for n, s in services.items() if str(s.get("image", "")).startswith("postgres:"))
    return Stack(services, image, paymesh, nats, postgres, sorted(setup), sorted(tls_setup))


def _nats_config(stack: Stack, node: str) -> tuple[Path, dict[str, Any]]:
    svc = stack.services[node]
    argv = [str(a) for a in svc.get("command") or []]
    flag = next((i for i, a in enumerate(argv) if a in ("-c", "--config")), None)
    assert flag is not None and flag + 1 < len(argv), (
        f"docker-compose.yml: {node} should start `nats-server --config <path>` with its file from deploy/nats/"
    )
    in_container = argv[flag + 1]
    sources = [src for src, target in volumes_of(svc) if target == in_container]
    assert sources, f"docker-compose.yml: {node} reads {in_container} but mounts nothing there"
    path = (ROOT / sources[0]).resolve()
    assert path.is_relative_to(ROOT / "deploy" / "nats"), f"{node}'s config {sources[0]} should live under deploy/nats/"
    assert path.is_file(), f"{node}'s config {sources[0]} does not exist"
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} should be JSON (nats-server accepts it, and so can this test): {exc}")


def _port_of_listen(listen: str | int) -> int:
    return int(str(listen).rpartition(":")[2])


# --- the checks --------------------------------------------------------------------------


def test_compose_file_parses() -> None:
    compose = load_compose()
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict) and compose["services"], (
        "docker-compose.yml should be a mapping with a non-empty `services:`"
    )


def test_three_nats_nodes_with_jetstream_fsync_always_and_routes_to_each_other(stack: Stack) -> None:
    assert len(stack.nats) == 3, f"docker-compose.yml should run 3 nats nodes (image nats:...), found {stack.nats}"
    configs = {node: _nats_config(stack, node) for node in stack.nats}
    cluster_port = {node: _port_of_listen(conf["cluster"]["listen"]) for node, (_, conf) in configs.items()}
    cluster_names = {conf.get("cluster", {}).get("name") for _, conf in configs.values()}
    route_auths: set[tuple[str, str]] = set()
    assert len(cluster_names) == 1 and None not in cluster_names, (
        f"deploy/nats: the nodes' cluster.name should be one name, got {cluster_names}"
    )
    for node, (path, conf) in configs.items():
        where = path.relative_to(ROOT)
        image = str(stack.services[node]["image"])
        version = tuple(int(x) for x in re.findall(r"\d+", image.split(":", 1)[1])[:2])
        assert version >= (2, 12), f"{node}: use nats:2.12 or newer (image {image})"
        assert conf.get("server_name") == node, f"{where}: server_name should be {node!r} (its compose service)"
        js = conf.get("jetstream")
        assert isinstance(js, dict), f"{where}: enable JetStream with a `jetstream` block"
        assert js.get("sync_interval") == "always", (
            f"{where}: set jetstream.sync_interval to \"always\": an acknowledged payment event must survive "
            "a power cut (the default fsyncs every two minutes)"
        )
        store = str(js.get("store_dir", ""))
        mounts = [target for _, target in volumes_of(stack.services[node])]
        assert any(store == t or store.startswith(t.rstrip("/") + "/") for t in mounts), (
            f"{where}: jetstream.store_dir {store!r} should be on a volume of {node} (mounted: {mounts})"
        )
        expected = {f"nats://{other}:{cluster_port[other]}" for other in stack.nats if other != node}
        urls = [urlsplit(route) for route in conf["cluster"].get("routes", [])]
        routes = {f"{u.scheme}://{u.hostname}:{u.port}" for u in urls}
        assert routes == expected, (
            f"{where}: cluster.routes should name the other two nodes: {sorted(expected)}, got {sorted(routes)}"
        )
        # With the clients' authorization on, a route without its own would be a way around it.
        route_auth = conf["cluster"].get("authorization") or {}
        assert route_auth.get("user") and route_auth.get("password"), (
            f"{where}: set cluster.authorization (user, password): any container could otherwise join as a route")
        assert {(u.username, u.password) for u in urls} == {(route_auth["user"], route_auth["password"])}, (
            f"{where}: each route URL should carry cluster.authorization's user and password")
        route_auths.add((route_auth["user"], route_auth["password"]))
        # The real parser: unknown fields, bad durations and minimums fail here, not at `compose up`.
        checked = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        assert checked.returncode == 0, f"nats-server rejects {where}: {checked.stderr or checked.stdout}"
    assert len(route_auths) == 1, "deploy/nats: the nodes' cluster.authorization should be one user and password"


def test_nats_nodes_are_healthy_only_with_jetstream_on(stack: Stack) -> None:
    for node in stack.nats:
        _, conf = _nats_config(stack, node)
        monitor = conf.get("http_port") or (_port_of_listen(conf["http"]) if "http" in conf else None)
        assert monitor, f"deploy/nats config of {node}: enable the monitoring port (http_port) for the health check"
        argv = healthcheck_argv(node, stack.services[node])
        urls = [a for a in argv if "/healthz" in a]
        assert urls, f"{node}'s healthcheck should fetch /healthz?js-enabled-only=true from its monitoring port"
        url = urlsplit(urls[0])
        assert url.port == int(monitor), f"{node}'s healthcheck asks port {url.port}; the monitoring port is {monitor}"
        assert parse_qs(url.query).get("js-enabled-only") == ["true"], (
            f"{node}'s healthcheck URL needs ?js-enabled-only=true"
        )


def test_nats_url_lists_exactly_the_three_nodes_on_their_client_port(stack: Stack) -> None:
    expected = set()
    for node in stack.nats:
        _, conf = _nats_config(stack, node)
        expected.add(f"nats://{node}:{conf.get('port', 4222)}")
    for name in stack.paymesh:
        raw = env_of(stack.services[name]).get("PAYMESH_NATS_URL", "")
        urls = [u.strip() for u in raw.split(",") if u.strip()]
        assert len(urls) == len(set(urls)) and set(urls) == expected, (
            f"docker-compose.yml: {name}'s PAYMESH_NATS_URL should be {','.join(sorted(expected))}, got {raw!r}"
        )


def test_streams_are_replicated_on_all_three_nodes(stack: Stack) -> None:
    for name in stack.paymesh:
        value = env_of(stack.services[name]).get("PAYMESH_STREAM_REPLICAS")
        assert value == str(len(stack.nats)) == "3", (
            f"docker-compose.yml: {name} should set PAYMESH_STREAM_REPLICAS=3 (R3 on the 3-node cluster), got {value!r}"
        )


def test_two_replicas_of_each_service(stack: Stack) -> None:
    counts = dict.fromkeys(mesh.NAMES, 0)
    for name, module in stack.paymesh.items():
        counts[module] += replicas_of(stack.services[name])
    wrong = {m: n for m, n in counts.items() if n != REPLICAS}
    assert not wrong, f"docker-compose.yml should run {REPLICAS} replicas of each service; counts: {counts}"


def test_every_service_is_health_checked_by_the_probe(stack: Stack) -> None:
    assert importlib.util.find_spec(HEALTH_MODULE) is not None, f"{HEALTH_MODULE} is missing"
    for name in stack.paymesh:
        argv = healthcheck_argv(name, stack.services[name])
        assert module_of(argv) == HEALTH_MODULE and len(argv) >= 4, (
            f"docker-compose.yml: {name}'s healthcheck should run [\"CMD\", \"python\", \"-m\", \"{HEALTH_MODULE}\", "
            f"\"127.0.0.1:<port>\"], got {argv}"
        )


def test_services_wait_for_healthy_nats_and_postgres(stack: Stack) -> None:
    assert len(stack.postgres) == 1, f"docker-compose.yml should run one postgres service, found {stack.postgres}"
    assert len(stack.setup) == 1, f"docker-compose.yml should run one {NATS_SETUP_MODULE} job, found {stack.setup}"
    infra = [*stack.nats, *stack.postgres]
    for dep in infra:
        healthcheck_argv(dep, stack.services[dep])  # `service_healthy` needs a health check to wait on
    for name in stack.paymesh:
        depends = stack.services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"docker-compose.yml: {name}'s depends_on should be a mapping with conditions"
        for dep in infra:
            condition = (depends.get(dep) or {}).get("condition")
            assert condition == "service_healthy", (
                f"docker-compose.yml: {name} should depend on {dep} with condition: service_healthy, got {condition!r}"
            )
        for dep, spec in depends.items():
            assert dep in stack.services, f"docker-compose.yml: {name} depends on {dep}, which is not a service"
            # The setup job is waited for until it has made the shared streams and exited.
            wanted = "service_completed_successfully" if dep in stack.setup + stack.tls_setup else "service_healthy"
            assert (spec or {}).get("condition") == wanted, (
                f"docker-compose.yml: {name} -> {dep}: use condition: {wanted}")
        assert set(stack.setup) <= set(depends), (
            f"docker-compose.yml: {name} should wait for {stack.setup} (condition: service_completed_successfully): "
            "it binds the DLQ stream and the keys' bucket, which its NATS user may not create"
        )


def test_each_service_has_its_own_database_created_by_the_init_script(stack: Stack) -> None:
    (pg_name,) = stack.postgres
    pg = stack.services[pg_name]
    tag = str(pg["image"]).split(":", 1)[1]
    assert re.split(r"[.-]", tag)[0] == "16", f"docker-compose.yml: use image postgres:16, got {pg['image']}"
    init_dirs = [src for src, target in volumes_of(pg) if target.rstrip("/") == "/docker-entrypoint-initdb.d"]
    assert init_dirs, f"docker-compose.yml: mount ./deploy/postgres/... on {pg_name}:/docker-entrypoint-initdb.d"
    init_dir = (ROOT / init_dirs[0]).resolve()
    assert init_dir.is_relative_to(ROOT / "deploy" / "postgres") and init_dir.is_dir(), (
        f"the postgres init scripts {init_dirs[0]} should be a directory under deploy/postgres/"
    )
    created = {
        m.lower()
        for sql in sorted(init_dir.glob("*.sql"))
        for m in re.findall(r'^\s*CREATE\s+DATABASE\s+"?(\w+)"?', sql.read_text(), re.IGNORECASE | re.MULTILINE)
    }
    assert created, f"{init_dir.relative_to(ROOT)} should CREATE DATABASE one database per service"
    pg_env = env_of(pg)
    user = pg_env.get("POSTGRES_USER", "postgres")
    database_of: dict[str, set[str]] = {}
    for name, module in stack.paymesh.items():
        prefix = mesh.spec(module).env_prefix
        raw = env_of(stack.services[name]).get(f"{prefix}_DB_URL")
        assert raw, f"docker-compose.yml: {name} should set {prefix}_DB_URL (else it uses SQLite inside its container)"
        url = make_url(raw)
        assert url.drivername == "postgresql+asyncpg", (
            f"{name}: {prefix}_DB_URL should be postgresql+asyncpg://..., got {url.drivername}"
        )
        assert url.host == pg_name and (url.port or 5432) == 5432, (
            f"{name}: {prefix}_DB_URL should point at {pg_name}:5432, got {url.host}:{url.port}"
        )
        assert url.username == user and url.password == pg_env.get("POSTGRES_PASSWORD"), (
            f"{name}: {prefix}_DB_URL's user and password should be {pg_name}'s POSTGRES_USER and POSTGRES_PASSWORD"
        )
        assert url.database in created, (
            f"{name}: {prefix}_DB_URL names database {url.database!r}, which {init_dir.relative_to(ROOT)} does not "
            f"create (it creates {sorted(created)})"
        )
        database_of.setdefault(module, set()).add(str(url.database))
    for module, dbs in database_of.items():
        assert len(dbs) == 1, f"the replicas of {module} should share one database, found {sorted(dbs)}"
    owners: dict[str, str] = {}
    for module, (db,) in database_of.items():
        assert db not in owners, f"{owners.get(db)} and {module} share database {db!r}: each service owns its own"
        owners[db] = module


def _aliases(svc: dict[str, Any]) -> list[str]:
    networks = svc.get("networks")
    if not isinstance(networks, dict):
        return []
    return [a for net in networks.values() for a in ((net or {}).get("aliases") or [])]


def test_grpc_ports_agree_between_bind_health_check_publish_and_callers(stack: Stack) -> None:
    port_of: dict[str, set[int]] = {}
    for name, module in stack.paymesh.items():
        svc = stack.services[name]
        prefix = mesh.spec(module).env_prefix
        addr = env_of(svc).get(f"{prefix}_GRPC_ADDR")
        assert addr, (
            f"docker-compose.yml: {name} should set {prefix}_GRPC_ADDR=0.0.0.0:<port> (the default binds loopback only)"
        )
        host, port = split_addr(addr)
        assert host in WILDCARD_HOSTS, (
            f"docker-compose.yml: {name}'s {prefix}_GRPC_ADDR={addr}: bind 0.0.0.0 inside the container so the "
            "other containers can reach it (publish to the host on 127.0.0.1 under ports:)"
        )
        check_host, check_port = split_addr(healthcheck_argv(name, svc)[3])
        assert check_port == port and (check_host in LOOPBACK_HOSTS | WILDCARD_HOSTS), (
            f"docker-compose.yml: {name}'s healthcheck probes {check_host}:{check_port}; the service listens on {addr}"
        )
        targets = {p.target for p in ports_of(svc)}
        assert targets <= {port}, (
            f"docker-compose.yml: {name} publishes container ports {sorted(targets)}; it listens on {port}"
        )
        port_of.setdefault(module, set()).add(port)
    for module, ports in port_of.items():
        assert len(ports) == 1, f"docker-compose.yml: {module}'s replicas listen on different ports {sorted(ports)}"

    # The caller: payment_svc dials the gateway by a name that must reach every gateway replica.
    (gateway_port,) = port_of["gateway_mock"]
    gateways = sorted(n for n, m in stack.paymesh.items() if m == "gateway_mock")
    for name in sorted(n for n, m in stack.paymesh.items() if m == "payment_svc"):
        addr = env_of(stack.services[name]).get("PAYMENT_SVC_GATEWAY_ADDR")
        assert addr, f"docker-compose.yml: {name} should set PAYMENT_SVC_GATEWAY_ADDR (no gateway on its loopback)"
        host, port = split_addr(addr)
        assert port == gateway_port, (
            f"docker-compose.yml: {name}'s PAYMENT_SVC_GATEWAY_ADDR port is {port}; gateway: {gateway_port}"
        )
        reaching = sorted(g for g in gateways if host == g or host in _aliases(stack.services[g]))
        assert reaching == gateways, (
            f"docker-compose.yml: {name}'s PAYMENT_SVC_GATEWAY_ADDR host {host!r} reaches {reaching}, not every "
            f"gateway_mock service {gateways}: use their shared network alias (or a service with deploy.replicas)"
        )


def test_every_env_var_set_is_one_the_code_reads(stack: Stack) -> None:
    known = env_vars_config_reads()
    assert {"PAYMESH_NATS_URL", "ORDER_SVC_DB_URL", "PAYMESH_STREAM_REPLICAS"} <= known, (
        f"reading {CONFIG_PY.relative_to(ROOT)} found only {sorted(known)}; update env_vars_config_reads()"
    )
    prefixes = {s.env_prefix: s.name for s in mesh.SPECS}
    for name, module in stack.paymesh.items():
        for var in env_of(stack.services[name]):
            assert var in known, (
                f"docker-compose.yml: {name} sets {var}, "
                f"which neither paymesh/chassis/config.py nor a service.py reads "
                f"(typo? it reads {sorted(known)})"
            )
            owner = "payment_svc" if var == "PAYMENT_SVC_GATEWAY_ADDR" else next(
                (m for p, m in prefixes.items() if var.startswith(p + "_")), module)
            assert owner == module, f"docker-compose.yml: {name} runs {module} but sets {owner}'s {var}"


def test_webhooks_to_private_addresses_stay_refused(stack: Stack) -> None:
    """Production-like: a merchant's webhook URL reaching loopback, private or link-local addresses (SSRF) is
    refused; only `paymesh up`, on a developer's machine, sets PAYMESH_WEBHOOK_ALLOW_PRIVATE=true."""
    for name in stack.paymesh:
        assert not env_flag(env_of(stack.services[name]), ALLOW_PRIVATE_ENV), (
            f"docker-compose.yml: {name} sets {ALLOW_PRIVATE_ENV}; leave it unset (false) outside `paymesh up`"
        )


def test_published_ports_bind_loopback_only(stack: Stack) -> None:
    seen: dict[str, str] = {}
    for name, svc in stack.services.items():
        assert svc.get("network_mode") != "host", f"docker-compose.yml: {name} should not use network_mode: host"
        for port in ports_of(svc):
            assert port.host_ip in ("127.0.0.1", "[::1]", "::1"), (
                f"docker-compose.yml: {name} publishes {port.published or port.target} on "
                f"{port.host_ip or 'every interface'}; "
                f"write \"127.0.0.1:{port.published or port.target}:{port.target}\""
            )
            assert port.published, f"docker-compose.yml: {name}: give {port.target} a fixed host port"
            key = f"{port.host_ip}:{port.published}"
            assert key not in seen, f"docker-compose.yml: {name} and {seen.get(key)} both publish {key}"
            seen[key] = name


def test_dockerfile_builds_one_non_root_image_running_modules_that_exist(stack: Stack) -> None:
    image = stack.image
    assert image.base == "python:3.11-slim", f"Dockerfile: build FROM python:3.11-slim, not {image.base!r}"
    assert image.user and image.user.split(":")[0] not in ("root", "0"), "Dockerfile: end with USER <non-root user>"
    commands = [shlex.split(part) for run in image.runs for part in re.split(r"&&|;", run)]
    pip = [argv for argv in commands if "pip" in argv and "install" in argv]
    extras = [a for argv in pip for a in argv if a.startswith(".[")]
    assert not extras, f"Dockerfile: `pip install .` without extras (no test tooling in the image), found {extras}"
    assert any("." in argv for argv in pip), f"Dockerfile: `pip install .` the repo; found {pip}"
    assert image.entrypoint or image.cmd, "Dockerfile: set ENTRYPOINT [\"python\", \"-m\"] (or a CMD)"
    modules = {module_of(image.entrypoint + image.cmd)} | {
        module_of(argv_of(stack.services[n], image)) for n in stack.paymesh
    }
    for module in sorted(m or "" for m in modules):
        assert module, "Dockerfile/docker-compose.yml: every paymesh container should run `python -m <module>`"
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"the image runs `python -m {module}`, which does not exist"
        if spec.submodule_search_locations is not None:
            assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__.py"

    # What `pip install .` needs is in the build context and copied in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {p.rstrip("*.") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    copied = {Path(src).as_posix().rstrip("/") for argv in image.copies for src in argv[:-1]}
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    ignored = [line for line in lines if line and not line.startswith("#")]
    for path in sorted(needed):
        assert path in copied or "." in copied, f"Dockerfile: COPY {path} into the image (pip install . needs it)"
        hits = [pat for pat in ignored if not pat.startswith("!") and fnmatch.fnmatch(path, pat.strip("/"))]
        assert not hits, f".dockerignore excludes {path} (pattern {hits[0]}), which the image needs"
    for junk in (".venv", ".git", ".paymesh"):
        assert any(fnmatch.fnmatch(junk, pat.strip("/")) for pat in ignored), f".dockerignore: add {junk}"


# --- least privilege on the bus ----------------------------------------------------------


def _seed_mounted_at(name: str, path: str, stack: Stack) -> Path:
    """The host file of `name` mounted where its credentials variable points."""
    sources = [src for src, target in volumes_of(stack.services[name]) if target == path]
    assert sources, f"docker-compose.yml: {name} names {path} as its NATS credentials but mounts nothing there"
    source = (ROOT / sources[0]).resolve()
    assert source.is_relative_to(NATS_CREDS_DIR) and source.is_file(), (
        f"docker-compose.yml: {name}'s NATS seed {sources[0]} should be a file under deploy/nats/creds/"
    )
    return source


def compose_users(stack: Stack) -> dict[str, Path]:
    """NATS user -> the seed file its containers mount, checked to be one file per user."""
    seeds: dict[str, set[Path]] = {}
    for name, module in stack.paymesh.items():
        variable = creds_variable(mesh.spec(module))
        path = env_of(stack.services[name]).get(variable)
        assert path, f"docker-compose.yml: {name} should set {variable} (its own NATS user's seed file)"
        seeds.setdefault(module, set()).add(_seed_mounted_at(name, path, stack))
        mounted = {(ROOT / src).resolve() for src, _ in volumes_of(stack.services[name])}
        others = sorted(p.name for p in mounted if p.is_relative_to(NATS_CREDS_DIR))
        assert len(others) == 1, f"docker-compose.yml: {name} mounts the NATS seeds {others}; only its own"
    for name in stack.setup:
        path = env_of(stack.services[name]).get(OPERATOR_CREDS_ENV)
        assert path, f"docker-compose.yml: {name} should set {OPERATOR_CREDS_ENV} (the operator's seed file)"
        seeds.setdefault(OPERATOR, set()).add(_seed_mounted_at(name, path, stack))
    for user, paths in seeds.items():
        assert len(paths) == 1, f"docker-compose.yml: the containers of {user} mount different seeds {sorted(paths)}"
    assert set(seeds) == set(users(mesh.SPECS)), f"docker-compose.yml: NATS users {sorted(seeds)}"
    return {user: next(iter(paths)) for user, paths in seeds.items()}


def test_nats_nodes_admit_the_users_and_permissions_paymesh_up_writes(stack: Stack) -> None:
    keys = {user: public_key(path.read_text().strip()) for user, path in compose_users(stack).items()}
    expected = authorization(keys, mesh.SPECS)
    for node in stack.nats:
        path, conf = _nats_config(stack, node)
        assert conf.get("authorization") == expected, (
            f"{path.relative_to(ROOT)}: its authorization is not what paymesh/ops/nats_auth.py gives the users whose "
            "seeds docker-compose.yml mounts: run `.venv/bin/python scripts/deploy_nats.py`"
        )


def test_the_setup_job_makes_the_shared_streams_on_the_cluster_and_exits(stack: Stack) -> None:
    (name,) = stack.setup
    svc = stack.services[name]
    assert svc.get("restart") in (None, "no", "on-failure"), f"docker-compose.yml: {name} must exit, not restart"
    depends = svc.get("depends_on") or {}
    for node in stack.nats:
        assert (depends.get(node) or {}).get("condition") == "service_healthy", f"{name} should wait for {node}"
    env = env_of(svc)
    expected = {f"nats://{node}:{_nats_config(stack, node)[1].get('port', 4222)}" for node in stack.nats}
    assert set(env.get("PAYMESH_NATS_URL", "").split(",")) == expected, f"{name}: PAYMESH_NATS_URL"
    assert env.get("PAYMESH_STREAM_REPLICAS") == "3", f"{name}: the shared streams are R3 like the rest"
    assert set(env) <= {"PAYMESH_NATS_URL", "PAYMESH_STREAM_REPLICAS", OPERATOR_CREDS_ENV}, (
        f"docker-compose.yml: {name} sets {sorted(env)}; {NATS_SETUP_MODULE} reads no other"
    )


def test_every_service_serves_tls_with_the_certificates_the_setup_job_makes(stack: Stack) -> None:
    """As `paymesh up --tls`: each service's own certificate and key and the mesh's CA, from the volume the
    tls-setup job writes once (`python -m paymesh.ops.tls --data-dir D` writes D/tls), waited for."""
    (job,) = stack.tls_setup
    argv = argv_of(stack.services[job], stack.image)
    data_dir = argv[argv.index("--data-dir") + 1]
    written = {dst: src for src, dst in volumes_of(stack.services[job])}
    assert f"{data_dir}/tls" in written, f"docker-compose.yml: {job} should mount a volume at {data_dir}/tls"
    volume = written[f"{data_dir}/tls"]
    assert volume in (load_compose().get("volumes") or {}), f"docker-compose.yml: {volume} should be a named volume"
    assert stack.services[job].get("restart") in (None, "no", "on-failure"), f"{job} must exit, not restart"
    for name, module in stack.paymesh.items():
        svc = stack.services[name]
        env = env_of(svc)
        prefix = mesh.spec(module).env_prefix
        mounts = {src: dst for src, dst in volumes_of(svc)}
        assert mounts.get(volume) == f"{data_dir}/tls", f"docker-compose.yml: {name} should mount {volume} read-only"
        assert env.get(f"{prefix}_TLS_CERT") == f"{data_dir}/tls/{module}.pem", f"{name}: {prefix}_TLS_CERT"
        assert env.get(f"{prefix}_TLS_KEY") == f"{data_dir}/tls/{module}.key", f"{name}: {prefix}_TLS_KEY"
        assert env.get("PAYMESH_TLS_CA") == f"{data_dir}/tls/ca.pem", f"{name}: PAYMESH_TLS_CA"
        condition = ((svc.get("depends_on") or {}).get(job) or {}).get("condition")
        assert condition == "service_completed_successfully", f"docker-compose.yml: {name} should wait for {job}"
