"""Customers: the records, their CSV import and lookups."""
