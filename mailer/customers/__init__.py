"""Customers: the records and their import, and data subject requests (GDPR export, erasure)."""
