"""Sending for every vendor: `VendorClient` (retries, concurrency, stop), `Http`, the limiters."""
