"""Vendor settings from Prefect Secret blocks.

Every vendor setting that holds something sensitive (each `<VENDOR>_<CREDENTIAL>` named by the
connectors, and the vendor's addresses, `<VENDOR>_BASE_URL`, which for modulus names the customer
account, and URLs such as `ACCOUNTEER_TOKEN_URL`) can live in a Prefect Secret block named
after it in lowercase with dashes: `ALFRED_API_KEY` is the block `alfred-api-key`,
`MODULUS_BASE_URL` is `modulus-base-url`.

A credential the vendor replaces during a run (Accounteer's rotated refresh token) is saved
back where it came from by `credential_saver`: into its Secret block when the run read it from
one; when it came from the environment, the log says once that it must be updated there.

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
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from connectors.registry import CONNECTORS, VENDORS
from flows.pipeline.files import one_line

SECRET_BLOCK_TYPE = "secret"
_PAGE = 200

logger = logging.getLogger("invoice_sync.secrets")


class SettingsEnviron(dict[str, str]):
    """The settings mapping a run uses, remembering which settings came from Secret blocks."""

    def __init__(self, values: Mapping[str, str], from_blocks: Iterable[str] = ()) -> None:
        super().__init__(values)
        self.from_blocks = frozenset(from_blocks)


def setting_names(vendors: Iterable[str] | None = None) -> list[str]:
    """The settings kept as Secret blocks: each vendor's base URL, other URLs and credentials."""
    names: list[str] = []
    for vendor in vendors or VENDORS:
        prefix = vendor.upper()
        connector = CONNECTORS[vendor]
        names.append(f"{prefix}_BASE_URL")
        names.extend(f"{prefix}_{name}" for name in (*connector.url_names, *connector.credential_names))
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
) -> SettingsEnviron:
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
        return SettingsEnviron(env)
    try:
        from_blocks = read_blocks(missing)
    except Exception as error:  # an unreachable API must not crash the run; say it plainly
        log.warning("vendor settings: could not read Secret blocks (%s); using the environment only", one_line(error))
        return SettingsEnviron(env)
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
    return SettingsEnviron(env, from_blocks)


def save_secret_block(name: str, value: str, overwrite: bool = True) -> None:
    """Write `value` into the Secret block `name` (created if missing)."""
    from prefect.blocks.system import Secret

    # Prefect's documented call: its before-validator wraps the text, but the field is typed as already wrapped.
    Secret(value=value).save(name, overwrite=overwrite)  # type: ignore[arg-type]


def credential_saver(
    vendor: str,
    from_blocks: Iterable[str] = (),
    *,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    save_block: Callable[[str, str], None] = save_secret_block,
) -> Callable[[str, str], None]:
    """`VendorSettings.save_credential` for one vendor: a replaced credential goes back where it came from.

    From a Secret block: the block is overwritten with the new value. From the environment:
    nothing here can change it, so the log says once per setting that it must be updated
    (the new value is used for the rest of the run). Values are never logged.
    """
    log = log or logger
    blocks = frozenset(from_blocks)
    warned: set[str] = set()
    lock = threading.Lock()

    def save(credential: str, value: str) -> None:
        name = f"{vendor.upper()}_{credential}"
        block = block_name(name)
        if name in blocks:
            try:
                save_block(block, value)
            except Exception as error:
                log.error(
                    "%s replaced %s, and saving it in the Secret block %s failed (%s): the block still holds the "
                    "old value, which %s may refuse from now on",
                    vendor,
                    name,
                    block,
                    one_line(error),
                    vendor,
                )
            else:
                log.info("%s replaced %s: saved in its Secret block %s", vendor, name, block)
            return
        with lock:
            if name in warned:
                return
            warned.add(name)
        log.warning(
            "%s replaced %s during this run: the value set in the environment must be updated before the next run "
            "(%s may refuse the old one). Keep it in the Secret block %s instead and replacements are saved there.",
            vendor,
            name,
            vendor,
            block,
        )

    return save


def push_secrets(
    vendors: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overwrite: bool = True,
) -> tuple[list[str], list[str]]:
    """Save each vendor setting set in the environment as its Secret block.

    Returns (block names saved, setting names that were not set and so not saved).
    """
    env = os.environ if environ is None else environ
    saved: list[str] = []
    skipped: list[str] = []
    for name in setting_names(vendors):
        value = env.get(name, "").strip()
        if not value:
            skipped.append(name)
            continue
        save_secret_block(block_name(name), value, overwrite)
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
