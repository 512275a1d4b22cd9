"""mailer: consent-checked campaigns and transactional notices over Dramatiq, MJML and SMTP.

The public Python API:

* :func:`mailer.notify` stores and enqueues a transactional or marketing notice
  (:func:`mailer.notices.trigger.notify`).
* :func:`mailer.publish` reports a shop event to the automations
  (:func:`mailer.automations.publish.publish`).

Both are loaded on first use (module ``__getattr__``), so ``import mailer.settings``
and the other ground-floor modules do not pull in the whole engine.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["notify", "publish", "__version__"]


def __getattr__(name: str):
    # Lazy public API (PEP 562): importing the package must stay cheap for every submodule.
    if name == "notify":
        from mailer.notices.trigger import notify  # lazy public API, see __getattr__

        return notify
    if name == "publish":
        from mailer.automations.publish import publish  # lazy public API, see __getattr__

        return publish
    raise AttributeError(f"module 'mailer' has no attribute {name!r}")
