"""The HTTP front door: the app factory, the API routers and the recipient pages."""
