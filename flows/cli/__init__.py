"""The `invoice-sync` command."""
