"""`python -m sandbox [--port 8765] [--seed FILE] [--auto-create] [--latency S]`."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
