"""Triggering transactional notices: validate, store one delivery per idempotency key, enqueue through the port."""
