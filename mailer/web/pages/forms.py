"""Public sign-up and restock forms: ``/f/{form_id}`` hosted page, embed snippet, submissions with CORS.

* ``GET  /f/embed.js``           the optional script the snippet loads (served by mailer; the
                                 hosted page itself runs no script at all).
* ``GET  /f/{form_id}``          the hosted, localized, accessible page (``?locale=pl``; restock
                                 forms take ``?sku=``); it shows the form's wording in that locale,
                                 the exact words whose SHA-256 the ledger stores.
* ``GET  /f/{form_id}/embed``    the HTML snippet a shop pastes into its storefront.
* ``OPTIONS /f/{form_id}``       CORS preflight: allowed origins only.
* ``POST /f/{form_id}``          a normal form post (303 to the form's success or error URL, or a
                                 page) or a ``fetch`` asking for JSON (``Accept: application/json``).

A browser ``Origin`` that is neither mailer's own nor in the form's ``allowed_origins`` gets
403; ``Access-Control-Allow-Origin`` is only ever the caller's origin when it is allowed.
An unknown form is 404.  The abuse rules (honeypot, per-IP and per-address budgets,
double opt-in, one mail per ten minutes, the same answer for known and unknown addresses)
are :mod:`mailer.notices.signups`; the file format is :mod:`mailer.consent.forms`.
"""

from __future__ import annotations

import logging
from html import escape
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mailer.app import App
from mailer.consent import forms, wordings
from mailer.errors import NotFound, TransientDeliveryError, ValidationError
from mailer.limits import InvalidData
from mailer.notices import signups
from mailer.rendering import fallback_chain, i18n
from mailer.web import security as web_security

log = logging.getLogger("mailer.web.forms")

router = APIRouter()

#: Longest value read from any one posted field, characters (each field checks its own, tighter limit).
MAX_FIELD_CHARS = 2000
#: The honeypot's field name: people never see it, form-filling bots do.
HONEYPOT_FIELD = "website"
#: How long browsers may cache the embed script, seconds.
SCRIPT_MAX_AGE_S = 3600

STRINGS: dict[str, dict[str, str]] = {
    "en": {"signup_title": "Sign up", "restock_title": "Notify me when it is back", "email": "E-mail address",
           "first_name": "First name (optional)", "signup_button": "Sign up", "restock_button": "Notify me",
           "honeypot": "Leave this field empty", "product": "Product: {sku}",
           "thanks_title": "Check your inbox",
           "thanks": "Thank you! If the address is right, a mail with a confirmation link is on its way. "
                     "Nothing is sent to you until you confirm.",
           "invalid": "Please check the highlighted field.", "rate_limited": "Too many sign-ups from your "
           "network. Please try again in a minute.", "not_found": "There is no such form.",
           "unavailable": "This form is not available right now.", "refused": "This site may not use this form.",
           "error_title": "Something went wrong"},
    "pl": {"signup_title": "Zapisz się", "restock_title": "Powiadom mnie, gdy wróci", "email": "Adres e-mail",
           "first_name": "Imię (opcjonalnie)", "signup_button": "Zapisz się", "restock_button": "Powiadom mnie",
           "honeypot": "Zostaw to pole puste", "product": "Produkt: {sku}",
           "thanks_title": "Sprawdź skrzynkę",
           "thanks": "Dziękujemy! Jeśli adres jest poprawny, wysłaliśmy wiadomość z linkiem potwierdzającym. "
                     "Nic więcej nie wyślemy, dopóki nie potwierdzisz.",
           "invalid": "Sprawdź zaznaczone pole.", "rate_limited": "Zbyt wiele zapisów z Twojej sieci. "
           "Spróbuj ponownie za minutę.", "not_found": "Nie ma takiego formularza.",
           "unavailable": "Ten formularz jest chwilowo niedostępny.",
           "refused": "Ta strona nie może używać tego formularza.", "error_title": "Coś poszło nie tak"},
    "de": {"signup_title": "Anmelden", "restock_title": "Benachrichtigen, wenn wieder da",
           "email": "E-Mail-Adresse", "first_name": "Vorname (optional)", "signup_button": "Anmelden",
           "restock_button": "Benachrichtigen", "honeypot": "Dieses Feld leer lassen", "product": "Produkt: {sku}",
           "thanks_title": "Posteingang prüfen",
           "thanks": "Danke! Wenn die Adresse stimmt, ist eine Mail mit einem Bestätigungslink unterwegs. "
                     "Bis zur Bestätigung senden wir Ihnen nichts.",
           "invalid": "Bitte prüfen Sie das markierte Feld.", "rate_limited": "Zu viele Anmeldungen aus Ihrem "
           "Netz. Bitte versuchen Sie es in einer Minute erneut.", "not_found": "Dieses Formular gibt es nicht.",
           "unavailable": "Dieses Formular ist gerade nicht verfügbar.",
           "refused": "Diese Seite darf dieses Formular nicht verwenden.", "error_title": "Etwas ist schiefgelaufen"},
    "fr": {"signup_title": "Inscription", "restock_title": "Me prévenir de son retour", "email": "Adresse e-mail",
           "first_name": "Prénom (facultatif)", "signup_button": "S'inscrire", "restock_button": "Me prévenir",
           "honeypot": "Laissez ce champ vide", "product": "Produit : {sku}",
           "thanks_title": "Vérifiez votre boîte de réception",
           "thanks": "Merci ! Si l'adresse est correcte, un e-mail avec un lien de confirmation est en route. "
                     "Nous ne vous enverrons rien avant votre confirmation.",
           "invalid": "Veuillez vérifier le champ signalé.", "rate_limited": "Trop d'inscriptions depuis votre "
           "réseau. Veuillez réessayer dans une minute.", "not_found": "Ce formulaire n'existe pas.",
           "unavailable": "Ce formulaire n'est pas disponible pour le moment.",
           "refused": "Ce site ne peut pas utiliser ce formulaire.", "error_title": "Un problème est survenu"},
    "zh-TW": {"signup_title": "訂閱電子報", "restock_title": "到貨時通知我", "email": "電子郵件地址",
              "first_name": "名字（選填）", "signup_button": "訂閱", "restock_button": "到貨通知我",
              "honeypot": "請勿填寫此欄位", "product": "商品：{sku}", "thanks_title": "請查看您的收件匣",
              "thanks": "謝謝！如果地址正確，一封附有確認連結的郵件已寄出。在您確認之前，我們不會寄送任何內容給您。",
              "invalid": "請檢查標示的欄位。", "rate_limited": "來自您網路的訂閱次數過多，請一分鐘後再試。",
              "not_found": "找不到此表單。", "unavailable": "此表單目前無法使用。",
              "refused": "此網站無法使用這個表單。", "error_title": "發生錯誤"},
    "zh-CN": {"signup_title": "订阅电子报", "restock_title": "到货时通知我", "email": "电子邮件地址",
              "first_name": "名字（选填）", "signup_button": "订阅", "restock_button": "到货通知我",
              "honeypot": "请勿填写此栏", "product": "商品：{sku}", "thanks_title": "请查看您的收件箱",
              "thanks": "谢谢！如果地址正确，一封带有确认链接的邮件已发出。在您确认之前，我们不会向您发送任何内容。",
              "invalid": "请检查标出的字段。", "rate_limited": "来自您网络的订阅次数过多，请一分钟后再试。",
              "not_found": "找不到此表单。", "unavailable": "此表单暂时无法使用。",
              "refused": "此网站不能使用这个表单。", "error_title": "出现问题"},
    "ko": {"signup_title": "뉴스레터 구독", "restock_title": "재입고 알림 받기", "email": "이메일 주소",
           "first_name": "이름 (선택)", "signup_button": "구독하기", "restock_button": "알림 받기",
           "honeypot": "이 칸은 비워 두세요", "product": "상품: {sku}", "thanks_title": "받은편지함을 확인하세요",
           "thanks": "감사합니다! 주소가 맞다면 확인 링크가 담긴 메일이 발송되었습니다. "
                     "확인하시기 전에는 아무것도 보내지 않습니다.",
           "invalid": "표시된 항목을 확인해 주세요.", "rate_limited": "사용 중인 네트워크에서 구독 요청이 너무 많습니다. "
           "1분 후에 다시 시도해 주세요.", "not_found": "존재하지 않는 양식입니다.",
           "unavailable": "지금은 이 양식을 사용할 수 없습니다.", "refused": "이 사이트는 이 양식을 사용할 수 없습니다.",
           "error_title": "문제가 발생했습니다"},
    "ar": {"signup_title": "اشترك", "restock_title": "أعلمني عند توفره", "email": "عنوان البريد الإلكتروني",
           "first_name": "الاسم الأول (اختياري)", "signup_button": "اشترك", "restock_button": "أعلمني",
           "honeypot": "اترك هذا الحقل فارغًا", "product": "المنتج: {sku}", "thanks_title": "تحقق من بريدك الوارد",
           "thanks": "شكرًا لك! إذا كان العنوان صحيحًا، فقد أُرسلت رسالة تحتوي على رابط التأكيد. "
                     "لن نرسل إليك شيئًا حتى تؤكد.",
           "invalid": "يرجى التحقق من الحقل المحدد.", "rate_limited": "عدد كبير جدًا من الاشتراكات من شبكتك. "
           "يرجى المحاولة مرة أخرى بعد دقيقة.", "not_found": "هذا النموذج غير موجود.",
           "unavailable": "هذا النموذج غير متاح الآن.", "refused": "لا يمكن لهذا الموقع استخدام هذا النموذج.",
           "error_title": "حدث خطأ ما"},
}

#: The hosted page runs no script, loads nothing from elsewhere and may be framed only by allowed origins.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'self'{extra}"
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "strict-origin-when-cross-origin",
             "X-Content-Type-Options": "nosniff"}

_CSS = (":root{{{vars}}}"
        "body{{font-family:var(--mailer-font,-apple-system,'Segoe UI',Roboto,'Noto Sans',Arial,sans-serif);"
        "background:var(--mailer-background,#f4f4f4);color:var(--mailer-text,#222);margin:0;padding:24px}}"
        "main{{max-width:480px;margin:0 auto;background:var(--mailer-surface,#fff);"
        "border-radius:var(--mailer-radius,8px);padding:24px}}h1{{font-size:22px;margin-top:0}}"
        "label{{display:block;margin:12px 0 4px;font-size:16px}}"
        "input[type=email],input[type=text]{{width:100%;box-sizing:border-box;font-size:16px;padding:8px;"
        "border:1px solid #767676;border-radius:4px}}[aria-invalid=true]{{border-color:#b00020}}"
        "button{{margin-top:16px;font-size:16px;padding:10px 20px;border:0;border-radius:var(--mailer-radius,6px);"
        "background:var(--mailer-accent,#1f4e79);color:var(--mailer-accent-text,#fff);cursor:pointer}}"
        "button:focus,input:focus{{outline:3px solid var(--mailer-focus,#ffbf47);outline-offset:1px}}"
        ".wording{{font-size:15px}}.error{{color:#b00020}}.hp{{position:absolute;left:-10000px;width:1px;"
        "height:1px;overflow:hidden}}")

EMBED_JS = """/* mailer sign-up forms: submit with fetch and show the answer in place (optional). */
(function () {
  function init(form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var status = form.querySelector("[data-mailer-status]");
      var button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; }
      fetch(form.action, {method: "POST", body: new URLSearchParams(new FormData(form)),
                          headers: {"Accept": "application/json"}, credentials: "omit", mode: "cors"})
        .then(function (r) { return r.json(); })
        .then(function (j) {
          if (status) { status.textContent = j.message || ""; }
          if (j.status === "ok") { form.reset(); }
        })
        .catch(function () {
          if (status) { status.textContent = form.getAttribute("data-mailer-error") || "Sorry, that did not work."; }
        })
        .then(function () { if (button) { button.disabled = false; } });
    });
  }
  var all = document.querySelectorAll("form[data-mailer-form]");
  for (var i = 0; i < all.length; i++) { init(all[i]); }
})();
"""


def _mailer(request: Request) -> App:
    return request.app.state.mailer


def _locale(m: App, locale: str | None) -> str:
    if locale and not i18n.is_valid_locale(locale):
        locale = None
    for loc in fallback_chain(locale, m.settings.default_locale):
        if loc in STRINGS:
            return loc
    return "en"


def _t(loc: str, key: str, **values) -> str:
    return STRINGS.get(loc, STRINGS["en"])[key].format(**values)


def _load(m: App, form_id: str) -> forms.Form:
    """The form, NotFound when unknown; a broken file is logged (file, field) and answered 503."""
    try:
        return forms.load(m.settings, form_id)
    except ValidationError as exc:
        log.error("form %s cannot be served: %s", form_id, exc)
        raise _Unavailable() from None


class _Unavailable(Exception):
    pass


def _wording(m: App, form: forms.Form, locale: str | None) -> wordings.Version | None:
    if form.wording_id is None:
        return None
    with m.session() as s:
        return wordings.resolve(s, m.settings, form.wording_id, form.wording_version, locale)


def _fields_html(form: forms.Form, loc: str, wording: wordings.Version | None, *, prefix: str, sku: str | None,
                 errors: dict[str, str] | None = None, values: dict[str, str] | None = None) -> str:
    """The inputs of a form, labelled, with the wording tied to the address field."""
    errors, values = errors or {}, values or {}
    wid = f"{prefix}-wording"
    parts: list[str] = []
    if wording is not None:
        lang = "" if wording.locale == loc else f' lang="{escape(wording.locale)}"'
        parts.append(f'<p class="wording" id="{wid}"{lang}>{escape(wording.text)}</p>')
    if form.kind == "restock" and sku:
        parts.append(f"<p>{escape(_t(loc, 'product', sku=sku))}</p>")

    def field(name: str, label: str, kind: str, extra: str) -> None:
        fid = f"{prefix}-{name}"
        described = [wid] if (name == "email" and wording is not None) else []
        err = ""
        if name in errors:
            described.append(f"{fid}-error")
            err = f'<p class="error" id="{fid}-error">{escape(errors[name])}</p>'
        desc = f' aria-describedby="{" ".join(described)}"' if described else ""
        invalid = ' aria-invalid="true"' if name in errors else ""
        value = f' value="{escape(values[name])}"' if values.get(name) else ""
        parts.append(f'<label for="{fid}">{escape(label)}</label>'
                     f'<input id="{fid}" name="{name}" type="{kind}"{extra}{desc}{invalid}{value}>{err}')

    field("email", _t(loc, "email"), "email", ' required autocomplete="email" maxlength="320"')
    if "first_name" in form.fields and form.kind == "signup":
        field("first_name", _t(loc, "first_name"), "text", ' autocomplete="given-name" maxlength="100"')
    parts.append(f'<input type="hidden" name="locale" value="{escape(loc)}">')
    if form.kind == "restock":
        parts.append(f'<input type="hidden" name="sku" value="{escape(sku or "")}">')
    parts.append(f'<div class="hp" aria-hidden="true"><label for="{prefix}-hp">{escape(_t(loc, "honeypot"))}</label>'
                 f'<input id="{prefix}-hp" name="{HONEYPOT_FIELD}" type="text" tabindex="-1" autocomplete="off">'
                 "</div>")
    parts.append(f'<button type="submit">{escape(_t(loc, form.kind + "_button"))}</button>')
    return "".join(parts)


def _page(m: App, form: forms.Form | None, loc: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    theme = form.theme if form else {}
    css = _CSS.format(vars="".join(f"{k}:{v};" for k, v in theme.items()))
    html = (f'<!doctype html><html lang="{escape(loc)}" dir="{i18n.text_direction(loc)}"><head>'
            '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)} · {escape(m.settings.store_name)}</title><style>{css}</style></head>"
            f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>")
    ancestors = "".join(" " + o for o in (form.allowed_origins if form else ()))
    return HTMLResponse(html, status_code=status,
                        headers={**_NO_STORE, "Content-Security-Policy": _CSP.format(extra=ancestors)})


def _message_page(m: App, form: forms.Form | None, loc: str, title_key: str, key: str, status: int) -> HTMLResponse:
    return _page(m, form, loc, _t(loc, title_key), f'<p role="status">{escape(_t(loc, key))}</p>', status)


_HTML = {"content": {"text/html": {}}}


@router.get("/f/embed.js", tags=["forms"], response_class=Response,
            responses={200: {"content": {"text/javascript": {}}, "description": "The optional embed script."}})
def embed_script() -> Response:
    """The script an embedded form may load: posts with fetch and shows the answer in place."""
    return Response(EMBED_JS, media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": f"public, max-age={SCRIPT_MAX_AGE_S}",
                             "X-Content-Type-Options": "nosniff", "Access-Control-Allow-Origin": "*"})


@router.get("/f/{form_id}", tags=["forms"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "No such form."},
                       503: {**_HTML, "description": "The form's file is broken (see the log)."}})
def form_page(form_id: str, request: Request,
              locale: Annotated[str | None, Query(max_length=i18n.MAX_LOCALE_CHARS)] = None,
              sku: Annotated[str | None, Query(max_length=100)] = None) -> HTMLResponse:
    """The hosted form in ``locale``, showing the wording the ledger will store as proof."""
    m = _mailer(request)
    loc = _locale(m, locale)
    try:
        form = _load(m, form_id)
        wording = _wording(m, form, loc)
    except NotFound:
        return _message_page(m, None, loc, "error_title", "not_found", 404)
    except (_Unavailable, ValidationError):
        return _message_page(m, None, loc, "error_title", "unavailable", 503)
    if sku is not None and not forms.valid_sku(sku):
        sku = None
    return _page(m, form, loc, _t(loc, f"{form.kind}_title"), _hosted_form(form, loc, wording, sku))


def _hosted_form(form: forms.Form, loc: str, wording, sku: str | None, errors: dict | None = None,
                 values: dict | None = None) -> str:
    inner = _fields_html(form, loc, wording, prefix=f"mailer-{form.form_id}", sku=sku, errors=errors, values=values)
    return f'<form method="post" action="/f/{escape(form.form_id)}" accept-charset="utf-8" novalidate>{inner}</form>'


@router.get("/f/{form_id}/embed", tags=["forms"], response_class=HTMLResponse,
            responses={404: {**_HTML, "description": "No such form."}, 503: _HTML})
def form_embed(form_id: str, request: Request,
               locale: Annotated[str | None, Query(max_length=i18n.MAX_LOCALE_CHARS)] = None,
               sku: Annotated[str | None, Query(max_length=100)] = None,
               script: Annotated[bool, Query(description="Include the optional fetch script.")] = True) -> Response:
    """The HTML snippet to paste into a storefront: a plain form posting here, plus the optional script."""
    m = _mailer(request)
    loc = _locale(m, locale)
    try:
        form = _load(m, form_id)
        wording = _wording(m, form, loc)
    except NotFound:
        return _message_page(m, None, loc, "error_title", "not_found", 404)
    except (_Unavailable, ValidationError):
        return _message_page(m, None, loc, "error_title", "unavailable", 503)
    if sku is not None and not forms.valid_sku(sku):
        sku = None
    base = m.settings.base_url.rstrip("/")
    inner = _fields_html(form, loc, wording, prefix=f"mailer-{form.form_id}", sku=sku or "YOUR-SKU")
    snippet = (f'<form class="mailer-form" data-mailer-form method="post" action="{escape(base)}/f/'
               f'{escape(form.form_id)}" accept-charset="utf-8">'
               f'<style>.mailer-form .hp{{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden}}'
               f"</style>{inner}"
               '<p role="status" aria-live="polite" data-mailer-status></p></form>\n')
    if script:
        snippet += f'<script src="{escape(base)}/f/embed.js" defer></script>\n'
    return Response(snippet, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def _origin(request: Request, m: App, form: forms.Form) -> tuple[bool, str | None]:
    """(allowed, the origin to name in Access-Control-Allow-Origin or None for same-origin/no browser)."""
    raw = request.headers.get("origin")
    if raw is None:
        # No Origin: not a cross-origin browser request (browsers send it on every cross-origin POST).
        fetch_site = (request.headers.get("sec-fetch-site") or "").lower()
        return fetch_site in ("", "same-origin", "none"), None
    theirs = forms.origin_of(raw) if raw.strip().lower() != "null" else None
    if theirs is None:
        return False, None
    host = request.headers.get("host")
    ours = {forms.origin_of(m.settings.base_url)} | ({forms.origin_of(f"{theirs.split('://')[0]}://{host}")}
                                                      if host else set())
    if theirs in ours:
        return True, None
    if theirs in form.allowed_origins:
        return True, theirs
    return False, None


def _cors(origin: str | None) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {"Vary": "Origin"}


@router.options("/f/{form_id}", tags=["forms"], status_code=204,
                responses={403: {"description": "The Origin is not allowed."}, 404: {"description": "No such form."}})
def form_preflight(form_id: str, request: Request) -> Response:
    """CORS preflight for a fetch from an allowed origin."""
    m = _mailer(request)
    try:
        form = _load(m, form_id)
    except NotFound:
        return Response(status_code=404)
    except _Unavailable:
        return Response(status_code=503)
    allowed, origin = _origin(request, m, form)
    if not allowed or origin is None:
        return Response(status_code=403, headers={"Vary": "Origin"})
    return Response(status_code=204, headers={**_cors(origin), "Access-Control-Allow-Methods": "POST",
                                              "Access-Control-Allow-Headers": "Content-Type, Accept",
                                              "Access-Control-Max-Age": "600"})


def _wants_json(request: Request) -> bool:
    return "application/json" in (request.headers.get("accept") or "").lower()


def _redirect(url: str, **params: str) -> RedirectResponse:
    sep = "&" if "?" in url else "?"
    return RedirectResponse(url + (sep + urlencode(params) if params else ""), status_code=303)


@router.post("/f/{form_id}", tags=["forms"], response_class=HTMLResponse,
             responses={200: {**_HTML, "description": "Accepted (page); JSON {status, message} for fetch."},
                        303: {"description": "Accepted or refused: to the form's success or error URL."},
                        403: {"description": "The Origin is not allowed for this form."},
                        404: {"description": "No such form."},
                        422: {"description": "A field is invalid; the page or `detail[].field` names it."},
                        429: {"description": "Too many sign-ups from this IP."}})
def form_submit(form_id: str, request: Request,
                email: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                first_name: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                locale: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                sku: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                website: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None) -> Response:
    """A sign-up: answers the same whether the address is new, pending or already subscribed."""
    m = _mailer(request)
    as_json = _wants_json(request)
    loc = _locale(m, locale)
    try:
        form = _load(m, form_id)
    except NotFound:
        if as_json:
            return JSONResponse({"detail": f"no form {form_id!r}", "message": _t(loc, "not_found")}, 404)
        return _message_page(m, None, loc, "error_title", "not_found", 404)
    except _Unavailable:
        if as_json:
            return JSONResponse({"detail": "form unavailable", "message": _t(loc, "unavailable")}, 503)
        return _message_page(m, None, loc, "error_title", "unavailable", 503)
    allowed, origin = _origin(request, m, form)
    if not allowed:
        log.info("form %s: origin %r refused", form_id, request.headers.get("origin"))
        if as_json:
            return JSONResponse({"detail": "this origin may not post to this form", "message": _t(loc, "refused")},
                                403, headers={"Vary": "Origin"})
        return _message_page(m, form, loc, "error_title", "refused", 403)
    cors = _cors(origin)
    sub = signups.Submission(email=(email or "").strip() or None, first_name=(first_name or "").strip() or None,
                             locale=locale or None, sku=(sku or "").strip() or None, honeypot=website or None,
                             ip=web_security.client_ip(request, m.settings),
                             user_agent=request.headers.get("user-agent"))
    try:
        signups.submit(m, form, sub)
    except InvalidData as exc:
        if as_json:
            return JSONResponse({"detail": [{"field": f, "msg": msg} for f, msg in exc.problems],
                                 "message": _t(loc, "invalid")}, 422, headers=cors)
        if form.error_url:
            return _redirect(form.error_url, error=exc.problems[0][0])
        errors = {f: msg for f, msg in reversed(exc.problems)}
        wording = _wording(m, form, loc)
        body = (f'<p class="error" role="alert">{escape(_t(loc, "invalid"))}</p>'
                + _hosted_form(form, loc, wording, sub.sku if sub.sku and forms.valid_sku(sub.sku) else None,
                               errors, {"email": sub.email or "", "first_name": sub.first_name or ""}))
        return _page(m, form, loc, _t(loc, f"{form.kind}_title"), body, 422)
    except signups.SignupRateLimited:
        if as_json:
            return JSONResponse({"detail": "too many sign-ups from this IP", "message": _t(loc, "rate_limited")},
                                429, headers={**cors, "Retry-After": "60"})
        if form.error_url:
            return _redirect(form.error_url, error="rate_limited")
        return _message_page(m, form, loc, "error_title", "rate_limited", 429)
    except (TransientDeliveryError, ValidationError) as exc:  # the limiter's Redis is down, a wording vanished
        log.error("form %s: sign-up not recorded: %s", form_id, exc)
        if as_json:
            return JSONResponse({"detail": "unavailable", "message": _t(loc, "unavailable")}, 503, headers=cors)
        if form.error_url:
            return _redirect(form.error_url, error="unavailable")
        return _message_page(m, form, loc, "error_title", "unavailable", 503)
    if as_json:
        return JSONResponse({"status": "ok", "message": _t(loc, "thanks")}, 200, headers=cors)
    if form.success_url:
        return _redirect(form.success_url)
    return _message_page(m, form, loc, "thanks_title", "thanks", 200)

