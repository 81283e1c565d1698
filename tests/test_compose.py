"""Static checks of the Docker stack (docker-compose.yml, Dockerfile, .dockerignore); no Docker engine needed.

The Compose Specification JSON schema is vendored as ``tests/compose-spec.schema.json``. Where it came from:

* PyPI package ``check-jsonschema`` version 0.39.0 (wheel ``check_jsonschema-0.39.0-py3-none-any.whl``),
  file ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, copied byte for byte. check-jsonschema
  vendors it from the Compose Specification project (compose-spec/compose-spec, ``schema/compose-spec.json``,
  Apache-2.0; the wheel carries the licence as ``vendor/licenses/LICENSE.compose-spec``).
* sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64, the same as the package's own
  record in ``vendor/sha256/compose-spec.sha256``.
* Its ``$schema`` is JSON Schema draft 2020-12 (older copies, e.g. the one in docker-compose 1.29.2, are
  draft-07), so it is checked with ``Draft202012Validator``. It uses no ``format`` keyword, so jsonschema's
  format checker (enabled below) changes nothing.

To update it: ``pip download --no-deps -d /tmp/cj check-jsonschema``, unzip the wheel, copy that file over
``tests/compose-spec.schema.json`` and update the version and hash above.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
import tomllib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.schema.json")
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

Compose = dict[str, Any]
Service = Mapping[str, Any]

# What each service built from the repository runs. The simulator's arguments are checked separately.
EXPECTED_COMMANDS: dict[str, list[str]] = {
    "topics": ["enrich", "topics", "create"],
    "snapshot-flow": ["enrich", "flow", "snapshot"],
    "enrich-flow": ["enrich", "flow", "enrich"],
    "alerts": ["enrich", "alerts", "run"],
    "api": ["enrich", "api"],
    "simulator": ["enrich", "simulate"],
    "flatten": ["enrich", "flatten"],
}
WORKERS = ("snapshot-flow", "enrich-flow", "alerts", "api", "simulator")
FLOWS = ("snapshot-flow", "enrich-flow")
COMMON_ENV = {
    "ENRICH_KAFKA_BOOTSTRAP": "kafka:19092",
    "ENRICH_REDIS_URL": "redis://redis:6379/0",
    "ENRICH_SMTP_HOST": "mailpit",
    "ENRICH_SMTP_PORT": "1025",
}
STATE_DIR = "/var/lib/enrich"


# --- helpers ------------------------------------------------------------------------------------------------


@cache
def _compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


def load_compose() -> Compose:
    """A fresh copy of docker-compose.yml as data, anchors and ``<<`` merges resolved as Compose does."""
    data = yaml.safe_load(_compose_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return cast(Compose, data)


@cache
def compose_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    # The validator class must match the draft the schema declares (draft 2020-12 here).
    assert validator_for(schema) is Draft202012Validator, f"schema declares {schema.get('$schema')!r}"
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(instance: object) -> list[ValidationError]:
    return sorted(compose_validator().iter_errors(instance), key=lambda error: error.json_path)


def describe(errors: list[ValidationError]) -> str:
    lines: list[str] = []
    for error in errors:
        lines.append(f"{error.json_path}: {error.message}")
        lines.extend(f"    {sub.json_path}: {sub.message}" for sub in error.context or [])
    best = best_match(errors)
    if best is not None:
        lines.append(f"most relevant: {best.json_path}: {best.message}")
    return "\n".join(lines)


def services(compose: Compose) -> dict[str, Service]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "no services"
    return cast(dict[str, Service], found)


def builds_repo(service: Service) -> bool:
    """Whether the service is built from this repository's Dockerfile (``build: .``)."""
    build = service.get("build")
    if isinstance(build, Mapping):
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        return context in (".", "./") and dockerfile == "Dockerfile"
    return build in (".", "./")


def command(service: Service) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    assert isinstance(cmd, list)
    return [str(arg) for arg in cmd]


def environment(service: Service) -> dict[str, str]:
    """The service's environment as strings, from either the mapping or the ``KEY=VALUE`` list syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    assert isinstance(env, Mapping)
    result: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(value, bool):
            result[str(key)] = str(value).lower()
        else:
            result[str(key)] = "" if value is None else str(value)
    return result


def depends_on(service: Service) -> dict[str, str]:
    """Dependency name -> condition (the short list syntax means ``service_started``)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(name): "service_started" for name in deps}
    assert isinstance(deps, Mapping)
    return {str(name): str((spec or {}).get("condition", "service_started")) for name, spec in deps.items()}


def published_ports(service: Service) -> dict[int, int]:
    """Published host port -> container port."""
    result: dict[int, int] = {}
    for port in service.get("ports") or []:
        if isinstance(port, Mapping):
            result[int(port["published"])] = int(port["target"])
            continue
        parts = str(port).split("/", 1)[0].split(":")
        assert len(parts) >= 2, f"port {port!r} is not published on the host"
        result[int(parts[-2])] = int(parts[-1])
    return result


def volume_mounts(service: Service) -> dict[str, str]:
    """Container path -> source (named volume or host path)."""
    result: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, Mapping):
            result[str(volume["target"])] = str(volume.get("source", ""))
        else:
            source, _, rest = str(volume).partition(":")
            result[rest.split(":", 1)[0]] = source
    return result


def listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: host:port}."""
    result: dict[str, str] = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        result[name] = address
    return result


# --- schema -------------------------------------------------------------------------------------------------


def test_vendored_schema_is_the_recorded_one() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "tests/compose-spec.schema.json changed: update its provenance in this module's docstring"
    )


def test_compose_file_matches_compose_spec() -> None:
    compose = load_compose()
    errors = schema_errors(compose)
    assert not errors, "docker-compose.yml does not match the Compose Specification:\n" + describe(errors)


def _set_api_ports(compose: Compose) -> None:
    compose["services"]["api"]["ports"] = "not-a-list"


def _add_unknown_top_level_key(compose: Compose) -> None:
    compose["servics"] = {}


def _misspell_service_key(compose: Compose) -> None:
    compose["services"]["kafka"]["helthcheck"] = compose["services"]["kafka"].pop("healthcheck")


def _bad_depends_on_condition(compose: Compose) -> None:
    compose["services"]["alerts"]["depends_on"]["kafka"] = {"condition": "service_ready"}


def _unquoted_restart_no(compose: Compose) -> None:
    # `restart: no` without quotes is YAML false, which Compose rejects.
    compose["services"]["topics"]["restart"] = yaml.safe_load("restart: no")["restart"]


def _numeric_healthcheck_interval(compose: Compose) -> None:
    compose["services"]["redis"]["healthcheck"]["interval"] = 5


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        pytest.param(_set_api_ports, "$.services.api.ports", id="ports-not-a-list"),
        pytest.param(_add_unknown_top_level_key, "$", id="unknown-top-level-key"),
        pytest.param(_misspell_service_key, "$.services.kafka", id="unknown-service-key"),
        pytest.param(_bad_depends_on_condition, "$.services.alerts.depends_on", id="bad-condition"),
        pytest.param(_unquoted_restart_no, "$.services.topics.restart", id="restart-no-unquoted"),
        pytest.param(_numeric_healthcheck_interval, "$.services.redis.healthcheck", id="interval-not-string"),
    ],
)
def test_broken_compose_file_is_rejected(mutate: Callable[[Compose], None], where: str) -> None:
    broken = copy.deepcopy(load_compose())
    mutate(broken)
    errors = schema_errors(broken)
    assert errors, "the schema accepted a broken compose file"
    assert any(error.json_path.startswith(where) for error in errors), describe(errors)


# --- what users rely on -------------------------------------------------------------------------------------


def test_no_obsolete_version_key() -> None:
    assert "version" not in load_compose()


def test_built_services_run_enrich_commands() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "enrich" in pyproject["project"]["scripts"], "the commands need the `enrich` console script"

    built = {name: svc for name, svc in services(load_compose()).items() if builds_repo(svc)}
    assert set(built) == set(EXPECTED_COMMANDS)
    for name, service in built.items():
        cmd = command(service)
        assert cmd[:1] == ["enrich"], f"{name} runs {cmd!r}, not an `enrich ...` command"
        expected = EXPECTED_COMMANDS[name]
        assert cmd[: len(expected)] == expected, f"{name} runs {cmd!r}"
        assert "entrypoint" not in service, f"{name} overrides the entrypoint"


def test_simulator_is_a_demo_profile_service() -> None:
    simulator = services(load_compose())["simulator"]
    assert simulator.get("profiles") == ["demo"]
    cmd = command(simulator)
    assert cmd == [
        "enrich",
        "simulate",
        "--vehicles",
        "200",
        "--rate",
        "500",
        "--duration",
        "600",
        "--scenario",
        "headlights-left-on",
        "--scenario",
        "low-battery",
        "--scenario",
        "device-silent",
    ]
    profiled = {name for name, svc in services(load_compose()).items() if svc.get("profiles")}
    assert profiled == {"simulator", "flatten"}, "only the simulator and the batch job are optional"


def test_flatten_is_a_batch_job_with_its_volumes_and_known_options() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    flatten = services(load_compose())["flatten"]
    assert flatten.get("profiles") == ["batch"] and flatten.get("restart") == "no"
    assert {"flatten-in:/data/in:ro", "flatten-tables:/data/tables"} <= set(flatten["volumes"])
    cmd = command(flatten)
    usage = CliRunner().invoke(app, ["flatten", "--help"], terminal_width=200).output
    for option in (c for c in cmd if c.startswith("--")):
        assert option in usage, f"enrich flatten has no {option}"


def test_kafka_is_a_single_kraft_node() -> None:
    compose = load_compose()
    kafka = services(compose)["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert env["CLUSTER_ID"], "KRaft storage is formatted with CLUSTER_ID"

    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(protocols) == set(bound), "every listener needs a security protocol"
    assert bound[controller].endswith(":9093")
    assert controller not in advertised, "the controller listener is not advertised to clients"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # Containers use kafka:19092, the host uses the published port 9092 advertised as localhost:9092.
    assert "kafka:19092" in advertised.values()
    assert "localhost:9092" in advertised.values()
    assert published_ports(kafka).get(9092) == 9092
    assert 19092 not in published_ports(kafka)

    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert volume_mounts(kafka).get(env["KAFKA_LOG_DIRS"]) in compose["volumes"], "Kafka data is not kept"
    assert "test" in kafka.get("healthcheck", {})


def test_redis_persists_with_append_only_file() -> None:
    compose = load_compose()
    redis = services(compose)["redis"]
    assert str(redis["image"]).startswith("redis:7")
    cmd = command(redis)
    assert "--appendonly" in cmd and cmd[cmd.index("--appendonly") + 1] == "yes", cmd
    assert volume_mounts(redis).get("/data") in compose["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_mailpit_serves_smtp_and_web_ui() -> None:
    mailpit = services(load_compose())["mailpit"]
    assert str(mailpit["image"]).startswith("axllent/mailpit")
    assert published_ports(mailpit) == {1025: 1025, 8025: 8025}


def test_depends_on_targets_exist_and_can_be_waited_for() -> None:
    all_services = services(load_compose())
    for name, service in all_services.items():
        for target, condition in depends_on(service).items():
            assert target in all_services, f"{name} depends on undefined service {target!r}"
            assert target != name
            assert not all_services[target].get("profiles"), f"{name} depends on the optional {target}"
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target} to be healthy"
            if condition == "service_completed_successfully":
                assert all_services[target].get("restart") == "no", f"{target} must be a one-shot"


def test_workers_share_the_stack_configuration() -> None:
    compose = load_compose()
    all_services = services(compose)
    topics = all_services["topics"]
    assert topics.get("restart") == "no"
    assert depends_on(topics) == {"kafka": "service_healthy"}
    assert environment(topics)["ENRICH_KAFKA_BOOTSTRAP"] == COMMON_ENV["ENRICH_KAFKA_BOOTSTRAP"]

    for name in WORKERS:
        worker = all_services[name]
        env = environment(worker)
        for key, value in COMMON_ENV.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}"
        deps = depends_on(worker)
        assert deps["kafka"] == "service_healthy", name
        assert deps["redis"] == "service_healthy", name
        assert deps["topics"] == "service_completed_successfully", name
        if name != "simulator":  # it runs for --duration seconds, then stays stopped
            assert worker.get("restart") == "unless-stopped", name

    assert depends_on(all_services["alerts"]).get("mailpit") is not None, "alerts sends mail through Mailpit"

    api = all_services["api"]
    assert environment(api)["ENRICH_API_HOST"] == "0.0.0.0"
    assert published_ports(api).get(8000) == 8000

    flow_volumes: set[str] = set()
    for name in FLOWS:
        flow = all_services[name]
        assert environment(flow)["ENRICH_STATE_DIR"] == STATE_DIR, name
        volume = volume_mounts(flow).get(STATE_DIR, "")
        assert volume in compose["volumes"], f"{name} keeps no recovery state in a named volume"
        flow_volumes.add(volume)
    assert len(flow_volumes) == len(FLOWS), "each flow needs its own recovery volume"


def test_workers_are_checked_the_way_the_image_checks_them() -> None:
    """Each long-running worker has a healthcheck, the one `enrich health auto` (the image's HEALTHCHECK)
    would pick for its command and environment, and a restart policy that brings it back."""
    from cli.health import check_for

    all_services = services(load_compose())
    for name in ("snapshot-flow", "enrich-flow", "alerts", "api"):
        service = all_services[name]
        expected = check_for(command(service)[1:], environment(service))
        assert expected is not None, name
        check = service.get("healthcheck") or {}
        assert check.get("test") == ["CMD", "enrich", "health", *expected], name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        assert service.get("restart") == "unless-stopped", name
    assert check_for(["api"], {})[-1].endswith("/readyz")  # type: ignore[index]
    assert check_for(["alerts", "run"], {}) == ["alerts"]


def test_named_volumes_are_declared() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        for target, source in volume_mounts(service).items():
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source!r} at {target}"


# --- image --------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result: list[tuple[str, str]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def test_dockerfile_builds_a_non_root_enrich_image() -> None:
    stages = [args.split(" AS ")[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert stages[-1] == "python:3.12-slim", "the image is the last stage"
    final = _instructions()
    final = final[max(i for i, (keyword, _) in enumerate(final) if keyword == "FROM") :]
    instructions = final
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "pip install --no-cache-dir ." in runs
    # The native telemetry decoder: built in a stage of its own and installed into the image.
    assert any(k == "RUN" and "maturin build" in a and "native/Cargo.toml" in a for k, a in _instructions())
    assert ("COPY", "--from=native /wheels /tmp/wheels") in instructions and "enrich_native-" in runs
    assert f"chown enrich:enrich {STATE_DIR}" in runs, "the flows' state volume must be writable"

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoints = [json.loads(args) for keyword, args in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints in ([], [[]]), "no entrypoint: compose `command:` is the whole command line"
    cmds = [json.loads(args) for keyword, args in instructions if keyword == "CMD"]
    assert cmds[-1:] == [["enrich", "--help"]]

    checks = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the image needs one HEALTHCHECK"
    options, _, exec_form = checks[0].partition(" CMD ")
    assert json.loads(exec_form) == ["enrich", "health", "auto"], "exec form, no shell needed"
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, option


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".stack", ".git", ".env", "**/__pycache__", ".mypy_cache", ".pytest_cache"):
        assert required in patterns, required
    for needed in ("pyproject.toml", "enrich", "cli"):
        assert needed not in patterns, f"{needed} is needed to install the package"
