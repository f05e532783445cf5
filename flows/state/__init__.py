"""What outlives a run: the ledger of vendor answers, and the inbox folder's claims."""
