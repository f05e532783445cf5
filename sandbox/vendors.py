"""The simulated vendors, in the order they are listed and printed. A new vendor: one module
that builds a `VendorAPI` as `API`, added to `ALL`."""

from __future__ import annotations

from . import accounteer, alfred, appzen, modulus
from .vendor_api import VendorAPI

ALL: tuple[VendorAPI, ...] = (alfred.API, accounteer.API, appzen.API, modulus.API)
BY_NAME: dict[str, VendorAPI] = {api.name: api for api in ALL}

VENDORS: tuple[str, ...] = tuple(BY_NAME)
# The part of each base URL after the host: everything before the documented path.
BASE_PATHS: dict[str, str] = {api.name: api.base_path for api in ALL}
INITIAL_STATUS: dict[str, str] = {api.name: api.initial_status for api in ALL}
