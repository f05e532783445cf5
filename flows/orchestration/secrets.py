"""Vendor settings from Prefect Secret blocks.

Every vendor setting that holds something sensitive (each `<VENDOR>_<CREDENTIAL>` named by the
connectors, and `<VENDOR>_BASE_URL`, which for modulus names the customer account) can live in
a Prefect Secret block named after it in lowercase with dashes: `ALFRED_API_KEY` is the block
`alfred-api-key`, `MODULUS_BASE_URL` is `modulus-base-url`.

`settings_environ()` builds the mapping the flow hands to `VendorSettings.from_env`: the
process environment, with every setting that is *not set there* filled in from its Secret
block. An environment variable wins over a block: it is the explicit, local choice (a
deployment's job variables, a developer pointing one run at the sandbox), and when every
setting is in the environment no API call is made at all. Values are never logged; the log
says which names came from where.

`invoice-sync secrets push` saves the settings of the current environment as blocks
(`push_secrets`); `invoice-sync secrets list` shows, for each name, whether the environment and
a block have it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from connectors.registry import CONNECTORS, VENDORS
from flows.pipeline.files import one_line

SECRET_BLOCK_TYPE = "secret"
_PAGE = 200

logger = logging.getLogger("invoice_sync.secrets")


def setting_names(vendors: Iterable[str] | None = None) -> list[str]:
    """The settings kept as Secret blocks: each vendor's base URL and credentials."""
    names: list[str] = []
    for vendor in vendors or VENDORS:
        prefix = vendor.upper()
        names.append(f"{prefix}_BASE_URL")
        names.extend(f"{prefix}_{credential}" for credential in CONNECTORS[vendor].credential_names)
    return names


def block_name(setting: str) -> str:
    """`ALFRED_API_KEY` -> `alfred-api-key` (Prefect block names: lowercase, dashes)."""
    return setting.strip().lower().replace("_", "-")


def read_secret_blocks(settings: Iterable[str], client: Any = None) -> dict[str, str]:
    """setting -> value for each of `settings` that has a Secret block (one API call per 200 blocks)."""
    wanted = {block_name(name): name for name in settings}
    if not wanted:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    def read(api) -> dict[str, str]:
        found: dict[str, str] = {}
        offset = 0
        while True:
            try:
                documents = api.read_block_documents_by_type(
                    SECRET_BLOCK_TYPE, offset=offset, limit=_PAGE, include_secrets=True
                )
            except ObjectNotFound:  # the Secret block type is not registered: no blocks
                return found
            for document in documents:
                if document.name in wanted:
                    found[wanted[document.name]] = _plain(document.data.get("value"))
            if len(documents) < _PAGE:
                return found
            offset += _PAGE

    if client is not None:
        return read(client)
    with get_client(sync_client=True) as api:
        return read(api)


def settings_environ(
    vendors: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    read_blocks: Callable[[list[str]], dict[str, str]] = read_secret_blocks,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, str]:
    """The environment, with the vendor settings it lacks filled in from Secret blocks.

    An environment variable that is set (and not blank) wins over its block. If the Prefect API
    cannot be asked, the environment alone is returned and a warning says so: the affected
    vendors then fail their rows with CONFIG_MISSING, naming the missing settings.
    """
    log = log or logger
    env = dict(os.environ if environ is None else environ)
    names = setting_names(vendors)
    missing = [name for name in names if not env.get(name, "").strip()]
    if not missing:
        log.info("vendor settings: all %d from the environment", len(names))
        return env
    try:
        from_blocks = read_blocks(missing)
    except Exception as error:  # an unreachable API must not crash the run; say it plainly
        log.warning("vendor settings: could not read Secret blocks (%s); using the environment only", one_line(error))
        return env
    wanted = set(missing)  # the environment wins: a block never replaces a variable that is set
    from_blocks = {name: value for name, value in from_blocks.items() if name in wanted and value and value.strip()}
    env.update(from_blocks)
    still_missing = [name for name in missing if name not in from_blocks]
    log.info(
        "vendor settings: %d from the environment, %d from Secret blocks%s%s",
        len(names) - len(missing),
        len(from_blocks),
        f" ({', '.join(block_name(n) for n in sorted(from_blocks))})" if from_blocks else "",
        f"; not set anywhere: {', '.join(still_missing)}" if still_missing else "",
    )
    return env


def push_secrets(
    vendors: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overwrite: bool = True,
) -> tuple[list[str], list[str]]:
    """Save each vendor setting set in the environment as its Secret block.

    Returns (block names saved, setting names that were not set and so not saved).
    """
    from prefect.blocks.system import Secret

    env = os.environ if environ is None else environ
    saved: list[str] = []
    skipped: list[str] = []
    for name in setting_names(vendors):
        value = env.get(name, "").strip()
        if not value:
            skipped.append(name)
            continue
        # Prefect's documented call: its before-validator wraps the text, but the field is typed as already wrapped.
        Secret(value=value).save(block_name(name), overwrite=overwrite)  # type: ignore[arg-type]
        saved.append(block_name(name))
    return saved, skipped


def _plain(value: Any) -> str:
    """A Secret block's stored value as text (a JSON value is kept as JSON text)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if hasattr(value, "get_secret_value"):
        return str(value.get_secret_value())
    import json

    return json.dumps(value)
