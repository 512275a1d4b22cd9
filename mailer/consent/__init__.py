"""Consent: the hash-chained ledger and current state, suppressions, the compliance export and its verification."""
