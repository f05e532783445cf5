"""The vendor side: one connector per vendor and the shared machinery that sends for them.

    vocabulary  Decision, RowResult, Outcome, ErrorCode: the words the pipeline shares
    wire        the plain Request and Response a connector builds and reads
    reading     the one table from status or exception to an Action and an error code
    connector   the Connector contract; vendors/ holds one module per vendor
    registry    CONNECTORS, VENDORS and the vendor-list parser
    auth, settings, redact, errors
    sending/    VendorClient (retries, stop), Http (urllib3), rate limiters

Nothing here reads files, talks to Prefect or knows the ledger. This package imports nothing
on its own, so `connectors.vocabulary` stays free of HTTP for the pure pipeline stages.
"""
