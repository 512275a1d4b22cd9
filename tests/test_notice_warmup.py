"""Notice templates are compiled when a worker boots, not by the first notice of each kind and locale.

(:meth:`mailer.rendering.Renderer.warm`, :class:`mailer.worker.middleware.TemplateWarmupMiddleware`;
docs/benchmarks.md, "Notice latency under load": those first notices were the p99.)
"""

from __future__ import annotations

import threading

import dramatiq
from dramatiq.brokers.stub import StubBroker

from mailer.queue.port import QUEUE_BULK, QUEUE_TRANSACTIONAL
from mailer.rendering import Renderer
from mailer.worker.middleware import TemplateWarmupMiddleware

#: Generous bound for the warm-up thread on a loaded machine (a hang guard, not a timing assertion).
HANG_S = 120


def _notice_pairs(renderer: Renderer) -> set[tuple[str, str]]:
    return {(k, loc) for k in renderer.kinds() if not renderer.spec(k).newsletter for loc in renderer.spec(k).locales}


def test_warm_compiles_every_notice_kind_in_every_locale_and_no_newsletter(settings):
    # Given a fresh renderer
    renderer = Renderer(settings)
    pairs = _notice_pairs(renderer)
    # When it is warmed
    compiled = renderer.warm()
    # Then every notice kind is compiled in every locale it has, and nothing else
    assert compiled == len(pairs) == renderer.compiles
    assert {(k, loc) for (k, loc, key) in renderer._compiled if key is None} == pairs
    assert not any(renderer.spec(k).newsletter for (k, _, _) in renderer._compiled)
    # And a notice then renders without compiling anything
    renderer.render("order_delayed", "pl", renderer.sample("order_delayed"))
    assert renderer.compiles == len(pairs)
    # And warming again compiles nothing
    assert renderer.warm() == 0


def test_warm_stops_when_asked(settings):
    # Given a warm-up that is asked to stop before it starts
    renderer = Renderer(settings)
    stop = threading.Event()
    stop.set()
    # When it runs, Then it compiles nothing
    assert renderer.warm(stop=stop) == 0
    assert renderer.compiles == 0


class _App:
    def __init__(self, renderer):
        self.renderer = renderer


def _boot(settings, queues):
    broker = StubBroker()
    broker.emit_after("process_boot")
    app = _App(Renderer(settings))
    warmup = TemplateWarmupMiddleware(lambda: app)
    broker.add_middleware(warmup)
    broker.declare_queue(QUEUE_TRANSACTIONAL)
    broker.declare_queue(QUEUE_BULK)
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=1, worker_timeout=50)
    worker.start()
    return app, warmup, worker


def test_a_worker_that_takes_notices_warms_their_templates_when_it_boots(settings):
    # Given a worker process that consumes the transactional queue
    app, warmup, worker = _boot(settings, {QUEUE_TRANSACTIONAL, QUEUE_BULK})
    try:
        # When it has booted, Then a background thread compiles every notice template
        assert warmup._thread is not None
        warmup._thread.join(HANG_S)
        assert not warmup._thread.is_alive()
        assert app.renderer.compiles == len(_notice_pairs(app.renderer))
    finally:
        worker.stop(timeout=HANG_S * 1000)


def test_a_worker_for_campaigns_only_does_not_warm_notice_templates(settings):
    # Given a worker process that consumes only the bulk queue
    app, warmup, worker = _boot(settings, {QUEUE_BULK})
    try:
        # When it has booted, Then no warm-up runs
        assert warmup._thread is None
        assert app.renderer.compiles == 0
    finally:
        worker.stop(timeout=HANG_S * 1000)
