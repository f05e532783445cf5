"""Errors raised below a connector, named by what the caller must do about them.

The reading table (`connectors.reading.READINGS`) turns each into an `Action`: retry, give up
on the row, or stop the vendor.
"""

from __future__ import annotations


class AuthRefused(Exception):
    """The vendor refused our credentials: stop sending to it."""


class AuthUnavailable(Exception):
    """A session token could not be fetched for a transient reason: retry later."""


class AuthUnreadable(Exception):
    """The token endpoint answered something that is not the vendor's API (a sign-in page, a
    redirect): stop sending to it, every further call would read the same."""


class GlobalLimitError(Exception):
    """The shared rate limit named in the settings cannot be used: send nothing to the vendor."""
