"""The `paymesh` command: one small dispatcher over subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def run_up(args: argparse.Namespace) -> int:
    from paymesh.ops.launcher import up  # imported here so `paymesh --help` does not load gRPC

    return up(
        data_dir=args.data_dir,
        nats_port=args.nats_port,
        replicas=args.replicas,
        cluster=args.cluster,
        postgres_url=args.postgres,
        tls=args.tls,
        mtls=args.mtls,
    )


def at_least_one(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {raw}")
    return value


def add_up(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "up",
        help="run nats-server and the five services locally until Ctrl-C",
        description=(
            "Start an embedded nats-server (unless PAYMESH_NATS_URL is set) and the five services, "
            "wait until each reports SERVING, print their addresses, and stop them all on Ctrl-C. "
            "Settings come from the environment (ORDER_SVC_GRPC_ADDR, ..._DB_URL, PAYMESH_NATS_URL, ...). "
            "--replicas, --cluster and --postgres run on one machine what runs across several: "
            "replicas sharing each service's database and durable consumers, a JetStream cluster holding "
            "the streams at R3, and a PostgreSQL database per service."
        ),
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="databases, nats store and logs (default: $PAYMESH_DATA_DIR, else ./.paymesh)",
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        metavar="PORT",
        help="port of the embedded nats-server (default: $PAYMESH_NATS_PORT, else 4222, else a free port)",
    )
    parser.add_argument(
        "--replicas",
        type=at_least_one,
        default=1,
        metavar="N",
        help="processes per service (default 1); replica r listens on its service's port + 100*(r-1)",
    )
    parser.add_argument(
        "--cluster",
        type=at_least_one,
        default=1,
        metavar="N",
        help="start N routed nats-servers on free loopback ports, streams at R3 (default 1: one nats-server)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=(
            "a PostgreSQL server URL (postgresql://user@host:5432/postgres); creates paymesh_<service> "
            "databases if missing and points each service at its own (default: $PAYMESH_POSTGRES_URL, "
            "else SQLite files)"
        ),
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help=(
            "serve gRPC over TLS only: a local CA and a certificate per service under DATA_DIR/tls/ (made once, "
            "reused), every client of the mesh verifying against it; prints the CA's path for `grpcurl -cacert`"
        ),
    )
    parser.add_argument(
        "--mtls",
        action="store_true",
        help="--tls, and the services demand client certificates from each other and from tools "
             "(PAYMESH_TLS_CLIENT_AUTH=require)",
    )
    parser.set_defaults(handler=run_up)


def run_demo(args: argparse.Namespace) -> int:
    import os

    from paymesh.ops.mesh_file import running_env
    from paymesh.tools.demo import run  # imported here so `paymesh --help` does not load gRPC

    env, _ = running_env(os.environ, args.data_dir)  # a running `paymesh up`: the demo uses it, and leaves it running
    return run(data_dir=args.data_dir, env=env)


def add_demo(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="place a mix of orders on a mesh, follow them live, and print what each became",
        description=(
            "Start the mesh as `paymesh up` does (or use the running one named by PAYMESH_NATS_URL and the "
            "..._GRPC_ADDR variables of its services, if it answers), register a webhook endpoint for a receiver in "
            "the demo's process, add a product, place orders that succeed, are declined, "
            "run out of stock, meet a flaky gateway or a lost response, and one cancelled after it was confirmed; "
            "print each order's status changes as they happen (WatchOrder), then a summary with the gateway's "
            "charges and refunds and the webhooks each order was sent (verified), and delete the endpoint. Exits 0 "
            "when every order ended as expected and got its webhooks."
        ),
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="databases, nats store and logs of a mesh it starts (default: $PAYMESH_DATA_DIR, else ./.paymesh)",
    )
    parser.set_defaults(handler=run_demo)


def run_dlq(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from paymesh.chassis.config import data_dir
    from paymesh.ops.dlq import main as dlq_main
    from paymesh.ops.mesh_file import running_env
    from paymesh.ops.mesh_nats import MeshNotFound, find_nats

    env, _ = running_env(os.environ, args.data_dir)
    try:
        # The mesh's NATS and its operator user, found as `paymesh keys` finds them.
        address = find_nats(args.nats_url, env, Path(args.data_dir or data_dir(env)).resolve())
    except MeshNotFound as exc:
        print(f"paymesh: {exc}", file=sys.stderr)
        return 2
    return dlq_main(address, args.action, args.subject, args.seq)


def add_dlq(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "dlq",
        help="list the dead-lettered events, or replay them onto their original subjects",
        description=(
            "`paymesh dlq list` shows every message in the DLQ stream with the consumer that gave up on it, "
            "its original subject, the reason and the error. `paymesh dlq replay [SEQ ...]` publishes the "
            "named messages (all listed ones when none is named) again on their original subjects and removes "
            "them from the DLQ; consumers that had applied them skip them through their inbox."
        ),
    )
    parser.add_argument("action", choices=["list", "replay"])
    parser.add_argument("seq", type=int, nargs="*", help="DLQ sequence numbers to replay (default: all listed)")
    parser.add_argument("--subject", default="dlq.>", help="only dlq.<service>.<consumer> subjects matching this")
    parser.add_argument("--nats-url", help="the mesh's NATS (default: $PAYMESH_NATS_URL, else the NATS `paymesh up` "
                                           "runs with the data dir)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its NATS and the operator's NATS user (default: "
                             "$PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_dlq)


def run_keys(args: argparse.Namespace) -> int:
    import os

    from paymesh.ops.keys import main as keys_main  # imported here so `paymesh --help` does not load gRPC
    from paymesh.ops.mesh_file import running_env

    return keys_main(args, running_env(os.environ, getattr(args, "data_dir", None))[0])


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the running mesh is, for the commands that manage its merchants and keys."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--nats-url", help="the mesh's NATS (default: $PAYMESH_NATS_URL, else the NATS `paymesh up` "
                                           "runs with the data dir)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its NATS and key pepper (default: $PAYMESH_DATA_DIR, "
                             "else ./.paymesh)")


def add_merchants(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "merchants",
        help="create and list the merchants of a running mesh",
        description=(
            "`paymesh merchants create NAME` makes a merchant and its first API key, with every merchant scope, "
            "and prints the key once. `paymesh merchants list` shows them. The mesh is found by --nats-url, "
            "else $PAYMESH_NATS_URL, else the data dir of `paymesh up`."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a merchant and its first API key (shown once)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--id", dest="merchant_id", metavar="MERCHANT_ID",
                        help="take this id instead of a new one: `--id mer_legacy` gives the rows written before "
                             "paymesh knew merchants (the migrations give them to mer_legacy) a merchant and key")
    add_mesh_arguments(create)
    add_mesh_arguments(actions.add_parser("list", help="every merchant, oldest first"))
    parser.set_defaults(handler=run_keys)


def add_keys(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "keys",
        help="create, list, roll and revoke the API keys of a running mesh",
        description=(
            "API keys of merchants and operators. A secret is printed once, when made (create, roll); lists "
            "show its first characters only. Durations read 30d, 24h, 90m, 45s. The mesh is found by --nats-url, "
            "else $PAYMESH_NATS_URL, else the data dir of `paymesh up`."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="a new key for a merchant (or --operator)")
    create.add_argument("--merchant", metavar="ID", help="the merchant the key acts for (mer_...)")
    create.add_argument("--scope", action="append", metavar="S",
                        help="a scope the key holds; repeat for more (default: every merchant scope)")
    create.add_argument("--expires-in", metavar="DURATION", help="the key stops working after this (default: never)")
    create.add_argument("--operator", action="store_true",
                        help="an operator key (gateway Configure, key management): no merchant, no --scope")
    listing = actions.add_parser("list", help="every key: id, merchant, scopes, prefix, expiry, state; never a secret")
    listing.add_argument("--merchant", metavar="ID", help="only this merchant's keys")
    roll = actions.add_parser("roll", help="a new key with the same merchant and scopes; the old one works a grace")
    roll.add_argument("key_id", metavar="KEY_ID")
    roll.add_argument("--grace", default="24h", metavar="DURATION",
                      help="how long the old key keeps working (default 24h)")
    revoke = actions.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("key_id", metavar="KEY_ID")
    for action in (create, listing, roll, revoke):
        add_mesh_arguments(action)
    parser.set_defaults(handler=run_keys)


def run_webhooks(args: argparse.Namespace) -> int:
    import os

    from paymesh.ops.mesh_file import running_env
    from paymesh.ops.webhooks_listen import main as listen_main  # imported here so `paymesh --help` does not load gRPC

    return listen_main(running_env(os.environ, args.data_dir)[0], args.data_dir, args.events, args.port, args.json)


def port_number(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def add_webhooks(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "webhooks",
        help="receive the development merchant's webhooks on this machine, as `stripe listen`",
        description=(
            "`paymesh webhooks listen` registers a webhook endpoint for the development merchant (the key "
            "$PAYMESH_API_KEY names, else the one `paymesh up` keeps in its data dir) at a receiver it serves on "
            "127.0.0.1, verifies each delivery's signature with the endpoint's secret, prints one line per "
            "delivery as it arrives (time, type, order, sequence, latency since the event, verified or BAD "
            "SIGNATURE, which is answered 400), and deletes the endpoint on Ctrl-C or SIGTERM. webhook_svc is "
            "found at $WEBHOOK_SVC_GRPC_ADDR (default 127.0.0.1:50055); it must allow private URLs, as `paymesh "
            "up` has it (PAYMESH_WEBHOOK_ALLOW_PRIVATE=true)."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listen = actions.add_parser("listen", help="serve an endpoint locally and print each verified delivery")
    listen.add_argument("--events", default="*", metavar="T,...",
                        help="event types to receive, separated by commas (default *: every type)")
    listen.add_argument("--port", type=port_number, default=0, metavar="N",
                        help="the local port to serve on (default: any free one, printed)")
    listen.add_argument("--json", action="store_true", help="print one JSON object per line")
    listen.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: the development merchant's key (default: "
                             "$PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_webhooks)


def run_bench(args: argparse.Namespace) -> int:
    from paymesh.tools.bench import Options
    from paymesh.tools.bench import main as bench_main

    opts = Options(
        rate=args.rate,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        gateway_latency_ms=args.gateway_latency_ms,
        json_out=args.json,
        tls=args.tls,
        webhook=args.webhook,
    )
    return bench_main(opts, args.data_dir)


def add_bench(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "bench",
        help="start a mesh, drive checkouts through gRPC, report sagas/s, latencies, CPU and memory",
        description=(
            "Starts the mesh on the embedded defaults in a temporary data dir, then runs sagas (CreateOrder, then "
            "WatchOrder to a settled status) in a closed loop (--concurrency clients, one saga at a time each) or "
            "an open loop (--rate arrivals per second), after a warm-up. Prints sagas/s, CreateOrder and end-to-end "
            "latency percentiles, outcomes, errors, each process's CPU seconds and peak RSS, and the outbox and "
            "consumer lag at the end."
        ),
    )
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: sagas started per second")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    parser.add_argument("--gateway-latency-ms", type=int, default=0, help="the bank's latency (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--data-dir", metavar="DIR", help="keep the mesh's data here instead of a temp dir")
    parser.add_argument("--tls", action="store_true", help="the mesh serves gRPC over TLS only, as `paymesh up --tls`")
    parser.add_argument("--webhook", action="store_true",
                        help="also register an order.confirmed webhook endpoint to a receiver in the bench process and "
                             "report delivery latency (from CreateOrder sent, and from the event's `created`)")
    parser.set_defaults(handler=run_bench)


def run_chaos(args: argparse.Namespace) -> int:
    from paymesh.tools.chaos import main as chaos_main

    return chaos_main(args)


def add_chaos(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from paymesh.tools.chaos import add_arguments

    parser = subcommands.add_parser(
        "chaos",
        help="place orders while killing services and nats-server, then check every money invariant",
        description=(
            "Starts the mesh as separate processes, places --orders orders with a mix of tokens, cancels and "
            "partial refunds while SIGKILLing and restarting random services, restarting nats-server and setting "
            "gateway fault rates (seeded); then stops the faults, waits for every order, and checks: every order "
            "terminal, stock conserved per sku, gateway net captured = confirmed totals (+ partial remains, + "
            "explained reviews), at most one charge per order, every audit trail valid, the DLQ empty. "
            "Exits non-zero on any violation, naming the orders."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_chaos)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paymesh", description="A payment saga mesh over gRPC and NATS.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_up(subcommands)
    add_demo(subcommands)
    add_dlq(subcommands)
    add_merchants(subcommands)
    add_keys(subcommands)
    add_webhooks(subcommands)
    add_bench(subcommands)
    add_chaos(subcommands)
    # The operator's commands keep their parsers beside their code (each module is light until it runs).
    from paymesh.ops.events_tail import add_events
    from paymesh.ops.reconcile import add_reconcile
    from paymesh.ops.status import add_status
    from paymesh.ops.stuck import add_stuck
    from paymesh.ops.trace import add_trace

    add_status(subcommands)
    add_trace(subcommands)
    add_stuck(subcommands)
    add_reconcile(subcommands)
    add_events(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = args.handler
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
