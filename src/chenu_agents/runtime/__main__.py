"""`python -m chenu_agents.runtime --config FILE`: verify the bundle, then serve it; exit 2 if refused."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from aiohttp import web

from chenu_agents.errors import ChenuError

from .app import Runtime, create_app
from .config import RuntimeConfig, hash_token

log = logging.getLogger("chenu_agents.runtime")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chenu_agents.runtime", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON settings; CHENU_RUNTIME_* variables override them")
    parser.add_argument("--check", action="store_true", help="verify and load the bundle, print it, exit")
    parser.add_argument("--hash-token", action="store_true", help="print the SHA-256 of the token read on stdin")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.hash_token:
        token = sys.stdin.readline().strip()
        if not token:
            print("no token on stdin", file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    try:
        config = RuntimeConfig.load(args.config)
        runtime = Runtime.start(config)
    except ChenuError as exc:
        print(f"chenu runtime: refusing to serve: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(runtime.current.describe(), indent=2))
        runtime.close()
        return 0

    app = create_app(runtime)

    async def on_startup(_app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(runtime.reload()))

    app.on_startup.append(on_startup)
    agent = runtime.current
    log.info(
        "serving %s %s (%s) in slot %s on %s:%s, load %.1f ms",
        agent.agent,
        agent.version,
        agent.digest,
        config.slot,
        config.host,
        config.port,
        agent.load_s * 1000,
    )
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log=None,
        shutdown_timeout=config.shutdown_timeout_s,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
