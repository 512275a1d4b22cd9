"""The recipient's own links: opens, clicks, unsubscribe, preferences, CSAT."""
