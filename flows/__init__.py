"""invoice-sync flows: read, validate and send accounts-payable decisions."""
