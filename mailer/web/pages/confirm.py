"""Double opt-in confirmation pages: ``GET /confirm/{token}`` asks, ``POST /confirm/{token}`` confirms.

A GET never changes anything (mail security scanners fetch every link in a message);
it shows a localized page with one button that POSTs back to the same URL.  The POST
records the grant through :func:`mailer.consent.confirm`; posting again (a double
click, a reload) answers "already confirmed" and records nothing more.  A forged or
expired link changes nothing and gets a 404 page.

Included by :func:`mailer.web.create_app` (``OPTIONAL_ROUTERS``).
"""

from __future__ import annotations

import logging
from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from mailer.app import App, get_app
from mailer.consent import ledger as consent
from mailer.errors import ConsentError, TokenError
from mailer.models import Customer
from mailer.rendering import fallback_chain
from mailer.web import security as web_security
from mailer.web.pages import recipient as web_pages

log = logging.getLogger("mailer.web_consent")

router = APIRouter()

#: Confirmation responses must not be cached, leak the token or set cookies.
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Referrer-Policy": "no-referrer"}

STRINGS: dict[str, dict[str, str]] = {
    "en": {"title": "Confirm your subscription", "question": "Do you want to receive {purpose} e-mails from {store}?",
           "button": "Yes, subscribe me", "done_title": "Subscription confirmed",
           "done": "Thank you! You will receive {purpose} e-mails from {store}. You can unsubscribe at any time.",
           "again": "You had already confirmed this subscription. Nothing has changed.",
           "ignore": "If you did not ask for this, close this page: you will not be subscribed."},
    "pl": {"title": "Potwierdź subskrypcję", "question": "Czy chcesz otrzymywać e-maile ({purpose}) od {store}?",
           "button": "Tak, zapisz mnie", "done_title": "Subskrypcja potwierdzona",
           "done": "Dziękujemy! Będziesz otrzymywać e-maile ({purpose}) od {store}. Możesz zrezygnować w każdej chwili.",
           "again": "Ta subskrypcja była już potwierdzona. Nic się nie zmieniło.",
           "ignore": "Jeśli to nie Ty, zamknij tę stronę: nie zostaniesz zapisany."},
    "de": {"title": "Anmeldung bestätigen", "question": "Möchten Sie E-Mails ({purpose}) von {store} erhalten?",
           "button": "Ja, anmelden", "done_title": "Anmeldung bestätigt",
           "done": "Danke! Sie erhalten E-Mails ({purpose}) von {store}. Sie können sich jederzeit abmelden.",
           "again": "Diese Anmeldung war bereits bestätigt. Es hat sich nichts geändert.",
           "ignore": "Wenn Sie das nicht angefordert haben, schließen Sie diese Seite: Sie werden nicht angemeldet."},
    "fr": {"title": "Confirmez votre inscription", "question": "Voulez-vous recevoir les e-mails « {purpose} » de {store} ?",
           "button": "Oui, je m'inscris", "done_title": "Inscription confirmée",
           "done": "Merci ! Vous recevrez les e-mails « {purpose} » de {store}. Vous pouvez vous désinscrire à tout moment.",
           "again": "Vous aviez déjà confirmé cette inscription. Rien n'a changé.",
           "ignore": "Si vous n'êtes pas à l'origine de cette demande, fermez cette page : vous ne serez pas inscrit."},
    "zh-TW": {"title": "確認訂閱", "question": "您要接收 {store} 的「{purpose}」電子郵件嗎？", "button": "是，訂閱",
              "done_title": "訂閱已確認", "done": "謝謝！您將收到 {store} 的「{purpose}」電子郵件，可隨時取消訂閱。",
              "again": "您先前已確認此訂閱，沒有任何變更。", "ignore": "如果這不是您的要求，請關閉此頁面，您不會被訂閱。"},
    "zh-CN": {"title": "确认订阅", "question": "您要接收 {store} 的“{purpose}”电子邮件吗？", "button": "是，订阅",
              "done_title": "订阅已确认", "done": "谢谢！您将收到 {store} 的“{purpose}”电子邮件，可随时退订。",
              "again": "您之前已确认此订阅，没有任何更改。", "ignore": "如果这不是您的请求，请关闭此页面，您不会被订阅。"},
    "ko": {"title": "구독 확인", "question": "{store}의 {purpose} 이메일을 받으시겠습니까?", "button": "네, 구독합니다",
           "done_title": "구독이 확인되었습니다", "done": "감사합니다! {store}의 {purpose} 이메일을 받게 됩니다. 언제든지 구독을 해지할 수 있습니다.",
           "again": "이미 확인된 구독입니다. 변경된 내용은 없습니다.",
           "ignore": "요청하지 않으셨다면 이 페이지를 닫으세요. 구독되지 않습니다."},
    "ar": {"title": "تأكيد الاشتراك", "question": "هل تريد تلقي رسائل {purpose} من {store}؟", "button": "نعم، اشترك",
           "done_title": "تم تأكيد الاشتراك", "done": "شكرًا لك! ستتلقى رسائل {purpose} من {store}. يمكنك إلغاء الاشتراك في أي وقت.",
           "again": "لقد أكدت هذا الاشتراك من قبل. لم يتغير شيء.",
           "ignore": "إذا لم تطلب ذلك، أغلق هذه الصفحة: لن يتم اشتراكك."},
}


def _locale(m: App, locale: str | None) -> str:
    for loc in fallback_chain(locale, m.settings.default_locale):
        if loc in STRINGS:
            return loc
    return "en"


def _t(locale: str, key: str, **values) -> str:
    return STRINGS.get(locale, STRINGS["en"])[key].format(**values)


def _purposes_label(loc: str, purposes: tuple[str, ...]) -> str:
    """The purposes a link confirms, named for people ("newsletter, loyalty")."""
    page_loc = web_pages.page_locale(loc)
    return ", ".join(web_pages.purpose_label(page_loc, p) for p in purposes)


def _mailer(request: Request) -> App:
    return getattr(request.app.state, "mailer", None) or get_app()


def _invalid(m: App, locale: str | None = None) -> HTMLResponse:
    page_loc = web_pages.page_locale(locale, m.settings.default_locale)
    return HTMLResponse(web_pages.invalid(page_loc), status_code=404, headers=NO_STORE)


def _client_ip(request: Request) -> str | None:
    """The client IP for the consent proof (``X-Forwarded-For`` only from trusted proxies)."""
    return web_security.client_ip(request, _mailer(request).settings)


_HTML = {"content": {"text/html": {}}}


@router.get("/confirm/{token}", tags=["consent"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "Forged, unknown or expired link."}})
def confirm_page(token: str, request: Request) -> HTMLResponse:
    """Ask the subscriber to confirm (a GET records nothing)."""
    m = _mailer(request)
    with m.session() as s:
        try:
            req = consent.pending_request(s, m.settings, token)
        except TokenError:
            return _invalid(m)
        customer = s.get(Customer, req.customer_id)
        loc = _locale(m, customer.locale if customer else None)
        purpose = _purposes_label(loc, consent.link_purposes(s, m.settings, token))
        confirmed = req.confirmed_at is not None
    store = m.settings.store_name
    if confirmed:
        body = f"<p>{escape(_t(loc, 'again'))}</p>"
        return HTMLResponse(web_pages.page(loc, _t(loc, "done_title"), body), headers=NO_STORE)
    body = (f"<p>{escape(_t(loc, 'question', purpose=purpose, store=store))}</p>"
            f'<form method="post" action="{escape(request.url.path)}">'
            f'<button type="submit">{escape(_t(loc, "button"))}</button></form>'
            f'<p class="note">{escape(_t(loc, "ignore"))}</p>')
    return HTMLResponse(web_pages.page(loc, _t(loc, "title"), body), headers=NO_STORE)


@router.post("/confirm/{token}", tags=["consent"], response_class=HTMLResponse,
             responses={404: {**_HTML, "description": "Forged, unknown or expired link."}})
def confirm_submit(token: str, request: Request) -> HTMLResponse:
    """Record the confirmation (once); a repeat POST changes nothing; a cross-site POST gets 403."""
    m = _mailer(request)
    if web_security.is_cross_site(request, m.settings):
        log.info("cross-site double opt-in confirmation refused")
        return HTMLResponse(web_pages.invalid(web_pages.page_locale(None, m.settings.default_locale)),
                            status_code=403, headers=NO_STORE)
    try:
        with m.session() as s:
            result = consent.confirm(s, m.settings, token, ip=_client_ip(request),
                                     user_agent=request.headers.get("user-agent"))
    except (TokenError, ConsentError) as exc:
        log.info("double opt-in confirmation refused: %s", exc)
        return _invalid(m)
    loc = _locale(m, result.locale)
    purpose = _purposes_label(loc, result.purposes or (result.purpose,))
    store = m.settings.store_name
    if result.status == "already_confirmed":
        body = f"<p>{escape(_t(loc, 'again'))}</p>"
    else:
        log.info("double opt-in confirmed: request %s purpose %s event %s", result.request_id, result.purpose,
                 result.event_id)
        body = f"<p>{escape(_t(loc, 'done', purpose=purpose, store=store))}</p>"
    return HTMLResponse(web_pages.page(loc, _t(loc, "done_title"), body), headers=NO_STORE)
