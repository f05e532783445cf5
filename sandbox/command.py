"""`python -m sandbox`: serve the sandbox until Ctrl-C (also `invoice-sync sandbox`)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .server import Sandbox
from .vendors import VENDORS


def main(argv: list[str] | None = None) -> int:
    """Serve the sandbox until Ctrl-C, printing its URLs and the settings to export."""
    parser = argparse.ArgumentParser(
        prog="invoice-sync sandbox", description="Serve local simulators of the four vendor APIs."
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--seed", type=Path, metavar="FILE", help="CSV: vendor,invoice_id[,status,kind,invoice_number]")
    parser.add_argument("--auto-create", action="store_true", help="create unknown invoices on first request")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="VENDOR=RATE[:RETRY_AFTER][:HEADERS]",
        help="the vendor enforces RATE requests in any second, unpublished (429 over it; RETRY_AFTER seconds "
        "if given; HEADERS ietf or x to announce it); repeatable",
    )
    args = parser.parse_args(argv)

    sandbox = Sandbox(port=args.port, auto_create=args.auto_create, latency=args.latency)
    try:
        for spec in args.limit:
            vendor, _, rest = spec.partition("=")
            rate, _, rest = rest.partition(":")
            retry_after, _, headers = rest.partition(":")
            sandbox.enforce_limit(
                vendor, int(rate), retry_after=float(retry_after) if retry_after else None, headers=headers or None
            )
    except ValueError as exc:
        print(f"sandbox: bad --limit: {exc}", file=sys.stderr)
        return 2
    seeded = 0
    if args.seed is not None:
        try:
            seeded = sandbox.seed_file(args.seed)
        except (OSError, ValueError, KeyError) as exc:
            print(f"sandbox: cannot load seed file: {exc}", file=sys.stderr)
            return 2
    try:
        sandbox.start()
    except OSError as exc:
        print(f"sandbox: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    lines = [f"# invoice-sync sandbox listening on {sandbox.url}"]
    lines += [f"#   {vendor:<11} {sandbox.base_url(vendor)}" for vendor in VENDORS]
    if args.seed is not None:
        lines.append(f"# seeded {seeded} invoice(s) from {args.seed}")
    if args.auto_create:
        lines.append("# unknown invoices are created on first request")
    lines.append("# paste these into the shell that runs invoice-sync (fake sandbox credentials):")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sandbox.env().items()]
    lines.append("# Ctrl-C to stop")
    print("\n".join(lines), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    print("# sandbox stopped", flush=True)
    return 0
