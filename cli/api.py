"""``enrich api``: serve the HTTP API; ``enrich api keys create|list|revoke``; ``enrich api policies
check``."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.table import Table

from enrich.rules.model import RuleError, parse_duration
from enrich.settings import Settings, get_settings
from stores.apikeys import RedisApiKeyStore

if TYPE_CHECKING:
    from stack.registry import Sample

api_app = typer.Typer(
    help="The HTTP API: serve it, manage its API keys, check its access policies.",
    invoke_without_command=True,
)
keys_app = typer.Typer(help="API keys (stored hashed in Redis; the key is shown once, at creation).")
policies_app = typer.Typer(help="Cedar access policies of the API.")
api_app.add_typer(keys_app, name="keys")
api_app.add_typer(policies_app, name="policies")
console = Console()
TAG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,31})=([^\x00-\x1f]{1,64})$")


@api_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default ENRICH_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ENRICH_API_PORT)")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Server processes (each its own Redis client)")
    ] = 1,
) -> None:
    """Serve the HTTP API (when no subcommand is given); /metrics on the same port. Refuses to start with one
    line on an invalid policy file or settings (exit 78) or a port in use (exit 69)."""
    if ctx.invoked_subcommand is not None:
        return
    import threading

    import uvicorn

    from api.main import create_app
    from api.policy import PolicyError
    from cli import startup

    settings = startup.load_settings("api")
    bind_host, bind_port = host or settings.api_host, port if port is not None else settings.api_port
    # uvicorn stops gracefully on SIGTERM, then raises the signal again: the heartbeat goes on that second one
    reg = startup.register(settings, "api", sys.argv[1:] or ["api"], name="api", handle_sigterm=True)
    try:
        app = create_app(settings)
    except PolicyError as exc:
        startup.cannot_start("api", f"access policies: {exc}", startup.EXIT_CONFIG, reg)
    startup.check_port("api", bind_host, bind_port, "HTTP port", reg)
    _wait_for_redis(settings)
    url = f"http://{'127.0.0.1' if bind_host in ('0.0.0.0', '::', '') else bind_host}:{bind_port}"
    if workers > 1:  # the policies were validated above; every worker builds its app from the environment
        reg.running(url=url, metrics_url=f"{url}/metrics")
        uvicorn.run("api.main:create_app", factory=True, workers=workers, host=bind_host, port=bind_port,
                    log_level="warning", access_log=False)  # fmt: skip
        reg.close()
        return
    reg.probe = lambda: _requests(app.state.metrics)
    server = uvicorn.Server(
        uvicorn.Config(app, host=bind_host, port=bind_port, log_level="warning", access_log=False)
    )

    def registered_once_serving() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            reg.running(url=url, metrics_url=f"{url}/metrics")

    threading.Thread(target=registered_once_serving, daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C: uvicorn stopped cleanly, then raised it again
        reg.close()
        raise typer.Exit(130) from None
    except SystemExit as exc:  # uvicorn gave up while starting (it logged why just above)
        code = exc.code if isinstance(exc.code, int) else 1
        why = f"the server stopped while starting on {bind_host}:{bind_port} (exit {code})"
        startup.cannot_start("api", why, startup.EXIT_UNAVAILABLE, reg)
    reg.close()


def _wait_for_redis(settings: Settings) -> None:
    """Like every worker, wait for Redis at start (one warning line, then one every 15 s) instead of failing:
    the API's start-up reads from it."""
    from stores.redis_client import redis_client

    client = redis_client(settings)
    try:
        client.ping()
    finally:
        client.close()


def _requests(metrics: Any) -> Sample:
    """Requests served so far, for the heartbeat's throughput."""
    from stack.registry import Sample

    total = sum(
        sample.value
        for family in metrics.requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
    return Sample(int(total), {}, unit="requests/s")


def _store() -> tuple[RedisApiKeyStore, aioredis.Redis]:
    from stores.redis_client import api_client

    s = get_settings()
    client = api_client(s)  # a cluster client for a redis+cluster:// URL
    return RedisApiKeyStore(client, s.api_prefix), client


def _parse_tags(tags: list[str]) -> dict[str, str]:
    from api.policy import load_policy_files

    s = get_settings()
    allowed = load_policy_files(s.api_policies, s.api_policy_schema).principal_attrs
    out: dict[str, str] = {}
    for t in tags:
        m = TAG.match(t)
        if not m:
            raise typer.BadParameter(f"{t!r}: use name=value")
        if m.group(1) not in allowed:
            raise typer.BadParameter(
                f"{t!r}: the Cedar schema declares these key tags: {', '.join(sorted(allowed))}"
            )
        out[m.group(1)] = m.group(2)
    return out


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    tag: Annotated[
        list[str] | None, typer.Option(help="A tag name=value (repeatable), e.g. environment=beta")
    ] = None,
    expires_in: Annotated[str | None, typer.Option(help="Expire after e.g. 30m, 12h, 720h")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the key as JSON")] = False,
) -> None:
    """Create a key. It is printed once and cannot be shown again (only its hash is stored)."""
    tags = _parse_tags(tag or [])
    try:
        expires = int(time.time() * 1000) + parse_duration(expires_in) if expires_in else None
    except RuleError as exc:
        raise typer.BadParameter(str(exc)) from exc

    async def go() -> tuple[dict[str, object], str]:
        store, client = _store()
        try:
            key, token = await store.create(name[:100], tags, expires)
            return key.public(), token
        finally:
            await client.aclose()

    public, token = asyncio.run(go())
    if json_out:
        print(orjson.dumps({**public, "key": token}).decode())
        return
    Console(stderr=True, soft_wrap=True).print(
        f"key {public['id']} for {name}, tags {tags or '{}'}; store it now, it is not shown again:"
    )
    print(token)


def fmt(ms: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(int(str(ms)) / 1000)) if ms else "-"


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their tags, expiry and revocation (never the keys themselves)."""

    async def go() -> list[dict[str, object]]:
        store, client = _store()
        try:
            return [k.public() for k in await store.list()]
        finally:
            await client.aclose()

    table = Table("id", "name", "tags", "created", "expires", "revoked")
    for k in asyncio.run(go()):
        tags = ",".join(f"{a}={b}" for a, b in dict(k["tags"]).items())  # type: ignore[call-overload]
        table.add_row(
            str(k["id"]),
            str(k["name"]),
            tags,
            fmt(k["created_at"]),
            fmt(k["expires_at"]),
            fmt(k["revoked_at"]),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`)")]) -> None:
    """Revoke a key (takes effect within a second on every API process)."""

    async def go() -> bool:
        store, client = _store()
        try:
            return await store.revoke(key_id)
        finally:
            await client.aclose()

    if not asyncio.run(go()):
        console.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@policies_app.command("check")
def policies_check(
    file: Annotated[
        Path | None, typer.Argument(help="Policy file (default ENRICH_API_POLICIES or the built-in)")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="Cedar schema (JSON; default the built-in)")] = None,
) -> None:
    """Parse the policies and validate them against the Cedar schema; errors name their line."""
    from api.policy import PolicyError, load_policy_files

    s = get_settings()
    try:
        p = load_policy_files(file or s.api_policies, schema or s.api_policy_schema)
    except PolicyError as exc:
        console.print(f"[red]invalid:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"ok: {p.source} — decisions read resource attributes {sorted(p.reads) or 'none'}; "
        f"keys may carry tags {sorted(p.principal_attrs)}"
    )
