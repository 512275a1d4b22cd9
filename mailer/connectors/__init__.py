"""Shop connectors: Shopify and WooCommerce webhooks in, e-mail consent written back out.

* :mod:`.signing`: the shops' secrets and the HMAC check of each delivery.
* :mod:`.inbox`: a verified delivery stored once under its webhook id, processed by the
  ``process_shop_webhook`` actor, the sweep hook and ``mailer connect status``.
* :mod:`.shopify`, :mod:`.woocommerce`: each topic mapped to mailer events and consent.
* :mod:`.privacy`: Shopify's mandatory privacy topics (access export, erasure, shop redact).
* :mod:`.writeback`: withdrawals made in mailer queued to the shop and sent once.

The package sits between the front doors and the services: it calls
:func:`mailer.automations.publish.publish`, :mod:`mailer.gdpr` and the consent ledger.
"""
