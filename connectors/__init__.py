"""One connector per vendor, and the registry the pipeline looks them up in."""

from connectors.accounteer import AccounteerConnector
from connectors.alfred import AlfredConnector
from connectors.appzen import AppZenConnector
from connectors.base import Connector
from connectors.modulus import ModulusConnector

CONNECTORS: dict[str, type[Connector]] = {
    c.name: c for c in (AlfredConnector, AccounteerConnector, AppZenConnector, ModulusConnector)
}
VENDORS: tuple[str, ...] = tuple(CONNECTORS)
