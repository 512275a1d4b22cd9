"""Compliance views and actions for the console (issue 16): customer search, the profile
read model, the consent ledger browser and the streamed consent export.

A service floor above ``automations | campaigns | gdpr``: it reads what those own and
never re-implements a rule (erasure and access exports are :mod:`mailer.gdpr.requests`,
suppressions :mod:`mailer.consent.suppressions`, the export :mod:`mailer.consent.export`).
"""
