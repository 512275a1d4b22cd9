"""Campaigns: the service (create, send, pause, resume, cancel), fan-out into deliveries, reports."""
