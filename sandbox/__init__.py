"""A local simulator of the four vendor APIs, for the demo, the tests and the benchmark.

One stdlib `ThreadingHTTPServer` on 127.0.0.1 serves every vendor under its own path prefix:

    alfred      {url}/alfred/api/v1/third-party-service   PUT   /invoice/{id}
    accounteer  {url}/accounteer/api/v0.1                 POST  /invoices/{id}
    appzen      {url}/appzen/dictionary-data-services     POST  /invoice/{uuid}/status-sync
    modulus     {url}/modulus                             POST  /api/cmn/Authenticate
                                                          PATCH /api/inv/v1/Invoice?token=T

Every answer follows ../shared/vendors.md beside the repository. Each vendor's module (alfred.py,
accounteer.py, appzen.py, modulus.py) says which parts are documented by the vendor and which
the sandbox assumes (a plausible answer where the vendor says nothing); vendors.py lists them,
server.py serves them. Faults can be queued per vendor (`Sandbox.inject`) to exercise retries,
ambiguous failures and token expiry. `{url}/portal/...` answers any request with a 200 HTML
sign-in page (`Sandbox.portal_url`, `env(portal=True)`): a base URL pointed at a web portal.

Run it by hand: `python -m sandbox [--port 8765] [--seed FILE] [--auto-create]`.
"""

from .command import main
from .server import FAULTS, KINDS, MODULUS_AUTHENTICATE, Sandbox
from .vendors import BASE_PATHS, INITIAL_STATUS, VENDORS

__all__ = ["BASE_PATHS", "FAULTS", "INITIAL_STATUS", "KINDS", "MODULUS_AUTHENTICATE", "VENDORS", "Sandbox", "main"]
