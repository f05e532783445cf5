"""The vendors this tool knows: one connector class each, and the one parser of vendor lists."""

from __future__ import annotations

from collections.abc import Iterable

from connectors.connector import Connector
from connectors.vendors.accounteer import AccounteerConnector
from connectors.vendors.alfred import AlfredConnector
from connectors.vendors.appzen import AppZenConnector
from connectors.vendors.modulus import ModulusConnector

CONNECTORS: dict[str, type[Connector]] = {
    c.name: c for c in (AlfredConnector, AccounteerConnector, AppZenConnector, ModulusConnector)
}
VENDORS: tuple[str, ...] = tuple(CONNECTORS)


class UnknownVendor(ValueError):
    """A vendor list names a vendor no connector is registered for."""


def parse_vendors(chosen: str | Iterable[str] | None) -> list[str] | None:
    """`"alfred, Modulus"` or `["alfred"]` -> `["alfred", "modulus"]`; None (or empty) means all.

    Raises UnknownVendor naming the unknown ones and the known ones.
    """
    if chosen is None:
        return None
    items = chosen.split(",") if isinstance(chosen, str) else list(chosen)
    vendors = [v.strip().lower() for v in items if v and v.strip()]
    if not vendors and isinstance(chosen, str):
        return None
    unknown = sorted(set(vendors) - set(VENDORS))
    if unknown:
        raise UnknownVendor(f"unknown vendor(s) {', '.join(unknown)}; known: {', '.join(VENDORS)}")
    return list(dict.fromkeys(vendors))
