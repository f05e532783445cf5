"""One module per vendor: its endpoint, auth, `build_request` and readings of its answers."""
