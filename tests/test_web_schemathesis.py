"""Schemathesis against /openapi.json: generated requests to every operation find no server error.

Runs through the real ASGI app with a valid API key (so the notice API's validation is
exercised, not only its 401), on SQLite and PostgreSQL, with a bounded number of
examples per operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from mailer.app import App, set_app
from mailer.transport import memory
from mailer.web import apikeys
from mailer.web.app import create_app
from tests.conftest import make_settings

#: Generated requests per API operation.
EXAMPLES = 40


@pytest.fixture
def web_app(db_url):
    memory.clear()
    app = App(make_settings(database_url=db_url))
    previous = set_app(app)
    from mailer.worker.actors import setup

    setup(app.settings)  # stub broker: accepted notices are enqueued in process
    with app.session() as s:
        app.api_key = apikeys.create(s, "schemathesis").key
    yield app
    app.close()
    set_app(previous)


@pytest.fixture
def web_schema(web_app):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(app=web_app))


schema = schemathesis.pytest.from_fixture("web_schema")


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, web_app):
    response = case.call(headers={"Authorization": f"Bearer {web_app.api_key}"})
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
