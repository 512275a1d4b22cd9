"""The small HTML pages a recipient sees: unsubscribe, preferences, CSAT, bad link.

Localized in the locales mailer writes mail in (en, zh-TW, zh-CN, pl, ko, fr, ar; ``ar``
right to left), chosen by the customer's locale with the same fallback chain as the
templates.  Pages are self-contained (inline CSS, no scripts, no external requests, no
cookies) and every value is HTML-escaped.
"""

from __future__ import annotations

from html import escape

from mailer.rendering import fallback_chain

RTL = {"ar"}

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe_title": "Unsubscribe",
        "unsubscribe_question": "Stop receiving {purpose} e-mails from {store}?",
        "unsubscribe_button": "Unsubscribe",
        "done_title": "You are unsubscribed",
        "done_text": "You will receive no more {purpose} e-mails from {store}.",
        "manage": "Manage all your e-mail preferences",
        "prefs_title": "Your e-mail preferences",
        "prefs_intro": "Choose what {store} may send you.",
        "save": "Save",
        "saved": "Your preferences are saved.",
        "invalid_title": "This link is not valid",
        "invalid_text": "The link is broken or has expired. Nothing was changed.",
        "csat_thanks": "Thank you for your rating!",
        "csat_rating": "Your rating: {rating} / 5",
        "csat_comment": "Anything else you would like to tell us?",
        "send": "Send",
        "comment_saved": "Thank you, we have received your comment.",
        "p:newsletter": "Newsletter",
        "p:product_updates": "Product updates",
        "p:tracking": "Open and click tracking",
        "p:loyalty": "Loyalty rewards and offers",
        "p:restock": "Back-in-stock alert: {sku}",
    },
    "zh-TW": {
        "unsubscribe_title": "取消訂閱",
        "unsubscribe_question": "要停止接收 {store} 的「{purpose}」郵件嗎？",
        "unsubscribe_button": "取消訂閱",
        "done_title": "您已取消訂閱",
        "done_text": "您將不會再收到 {store} 的「{purpose}」郵件。",
        "manage": "管理所有電子郵件偏好設定",
        "prefs_title": "您的電子郵件偏好設定",
        "prefs_intro": "請選擇 {store} 可以寄送給您的內容。",
        "save": "儲存",
        "saved": "您的偏好設定已儲存。",
        "invalid_title": "此連結無效",
        "invalid_text": "此連結已損壞或已過期，未做任何變更。",
        "csat_thanks": "感謝您的評分！",
        "csat_rating": "您的評分：{rating} / 5",
        "csat_comment": "還有什麼想告訴我們的嗎？",
        "send": "送出",
        "comment_saved": "感謝您，我們已收到您的意見。",
        "p:newsletter": "電子報",
        "p:product_updates": "產品最新消息",
        "p:tracking": "開信與點擊追蹤",
        "p:loyalty": "會員獎勵與優惠",
        "p:restock": "補貨通知：{sku}",
    },
    "zh-CN": {
        "unsubscribe_title": "退订",
        "unsubscribe_question": "不再接收 {store} 的“{purpose}”邮件？",
        "unsubscribe_button": "退订",
        "done_title": "您已成功退订",
        "done_text": "您将不会再收到 {store} 的“{purpose}”邮件。",
        "manage": "管理全部邮件偏好设置",
        "prefs_title": "您的邮件偏好设置",
        "prefs_intro": "请选择 {store} 可以向您发送的内容。",
        "save": "保存",
        "saved": "您的偏好设置已保存。",
        "invalid_title": "此链接无效",
        "invalid_text": "链接已损坏或已过期，未做任何更改。",
        "csat_thanks": "感谢您的评分！",
        "csat_rating": "您的评分：{rating} / 5",
        "csat_comment": "还有什么想告诉我们的吗？",
        "send": "提交",
        "comment_saved": "谢谢，我们已收到您的意见。",
        "p:newsletter": "新闻通讯",
        "p:product_updates": "产品动态",
        "p:tracking": "打开与点击跟踪",
        "p:loyalty": "会员奖励与优惠",
        "p:restock": "到货提醒：{sku}",
    },
    "pl": {
        "unsubscribe_title": "Wypisz się",
        "unsubscribe_question": "Czy chcesz przestać otrzymywać e-maile „{purpose}” od {store}?",
        "unsubscribe_button": "Wypisz mnie",
        "done_title": "Wypisano Cię z listy",
        "done_text": "Nie będziesz już otrzymywać e-maili „{purpose}” od {store}.",
        "manage": "Zarządzaj wszystkimi ustawieniami e-maili",
        "prefs_title": "Twoje ustawienia e-maili",
        "prefs_intro": "Wybierz, co {store} może Ci wysyłać.",
        "save": "Zapisz",
        "saved": "Twoje ustawienia zostały zapisane.",
        "invalid_title": "Ten link jest nieprawidłowy",
        "invalid_text": "Link jest uszkodzony lub wygasł. Nic nie zostało zmienione.",
        "csat_thanks": "Dziękujemy za ocenę!",
        "csat_rating": "Twoja ocena: {rating} / 5",
        "csat_comment": "Czy chcesz nam jeszcze coś przekazać?",
        "send": "Wyślij",
        "comment_saved": "Dziękujemy, otrzymaliśmy Twój komentarz.",
        "p:newsletter": "Newsletter",
        "p:product_updates": "Nowości o produktach",
        "p:tracking": "Śledzenie otwarć i kliknięć",
        "p:loyalty": "Nagrody i oferty programu lojalnościowego",
        "p:restock": "Powiadomienie o dostępności: {sku}",
    },
    "ko": {
        "unsubscribe_title": "수신 거부",
        "unsubscribe_question": "{store}의 '{purpose}' 이메일 수신을 중단하시겠습니까?",
        "unsubscribe_button": "수신 거부",
        "done_title": "수신 거부가 완료되었습니다",
        "done_text": "앞으로 {store}의 '{purpose}' 이메일이 발송되지 않습니다.",
        "manage": "이메일 수신 설정 전체 관리",
        "prefs_title": "이메일 수신 설정",
        "prefs_intro": "{store}에서 받을 이메일을 선택하세요.",
        "save": "저장",
        "saved": "수신 설정이 저장되었습니다.",
        "invalid_title": "유효하지 않은 링크입니다",
        "invalid_text": "링크가 손상되었거나 만료되었습니다. 변경된 내용은 없습니다.",
        "csat_thanks": "평가해 주셔서 감사합니다!",
        "csat_rating": "평점: {rating} / 5",
        "csat_comment": "더 전하고 싶은 말씀이 있으신가요?",
        "send": "보내기",
        "comment_saved": "감사합니다. 소중한 의견이 접수되었습니다.",
        "p:newsletter": "뉴스레터",
        "p:product_updates": "상품 소식",
        "p:tracking": "열람 및 클릭 추적",
        "p:loyalty": "멤버십 혜택 및 특가",
        "p:restock": "재입고 알림: {sku}",
    },
    "fr": {
        "unsubscribe_title": "Se désinscrire",
        "unsubscribe_question": "Ne plus recevoir les e-mails « {purpose} » de {store} ?",
        "unsubscribe_button": "Me désinscrire",
        "done_title": "Votre désinscription est confirmée",
        "done_text": "Vous ne recevrez plus les e-mails « {purpose} » de {store}.",
        "manage": "Gérer toutes vos préférences e-mail",
        "prefs_title": "Vos préférences e-mail",
        "prefs_intro": "Choisissez ce que {store} peut vous envoyer.",
        "save": "Enregistrer",
        "saved": "Vos préférences sont enregistrées.",
        "invalid_title": "Ce lien n'est pas valide",
        "invalid_text": "Le lien est incomplet ou a expiré. Rien n'a été modifié.",
        "csat_thanks": "Merci pour votre note !",
        "csat_rating": "Votre note : {rating} / 5",
        "csat_comment": "Souhaitez-vous ajouter quelque chose ?",
        "send": "Envoyer",
        "comment_saved": "Merci, nous avons bien reçu votre commentaire.",
        "p:newsletter": "Newsletter",
        "p:product_updates": "Nouveautés produits",
        "p:tracking": "Suivi des ouvertures et des clics",
        "p:loyalty": "Récompenses et offres fidélité",
        "p:restock": "Alerte de retour en stock : {sku}",
    },
    "ar": {
        "unsubscribe_title": "إلغاء الاشتراك",
        "unsubscribe_question": "هل تريد التوقف عن تلقي رسائل «{purpose}» من {store}؟",
        "unsubscribe_button": "إلغاء الاشتراك",
        "done_title": "تم إلغاء اشتراكك",
        "done_text": "لن تصلك بعد الآن رسائل «{purpose}» من {store}.",
        "manage": "إدارة جميع تفضيلات البريد الإلكتروني",
        "prefs_title": "تفضيلات بريدك الإلكتروني",
        "prefs_intro": "اختر ما يمكن أن يرسله إليك {store}.",
        "save": "حفظ",
        "saved": "تم حفظ تفضيلاتك.",
        "invalid_title": "هذا الرابط غير صالح",
        "invalid_text": "الرابط تالف أو منتهي الصلاحية. لم يتم تغيير أي شيء.",
        "csat_thanks": "شكرًا لتقييمك!",
        "csat_rating": "تقييمك: {rating} / 5",
        "csat_comment": "هل هناك شيء آخر تودّ إخبارنا به؟",
        "send": "إرسال",
        "comment_saved": "شكرًا لك، لقد تلقينا تعليقك.",
        "p:newsletter": "النشرة الإخبارية",
        "p:product_updates": "أخبار المنتجات",
        "p:tracking": "تتبع فتح الرسائل والنقرات",
        "p:loyalty": "مكافآت وعروض برنامج الولاء",
        "p:restock": "تنبيه توفر المنتج: {sku}",
    },
}


def page_locale(locale: str | None, default: str = "en") -> str:
    for loc in fallback_chain(locale, default):
        if loc in STRINGS:
            return loc
    return "en"


def t(locale: str, key: str, **values) -> str:
    text = STRINGS.get(locale, STRINGS["en"]).get(key) or STRINGS["en"][key]
    return text.format(**values) if values else text


def purpose_label(locale: str, purpose: str) -> str:
    if purpose.startswith("restock:"):
        return t(locale, "p:restock", sku=purpose.split(":", 1)[1])
    key = f"p:{purpose}"
    if key in STRINGS["en"]:
        return t(locale, key)
    return purpose.replace("_", " ").capitalize()


_CSS = ("body{font-family:-apple-system,'Segoe UI',Roboto,'Noto Sans',Arial,sans-serif;background:#f4f4f4;"
        "margin:0;padding:24px;color:#222}main{max-width:480px;margin:0 auto;background:#fff;"
        "border-radius:8px;padding:24px}h1{font-size:22px;margin-top:0}button{font-size:16px;"
        "padding:10px 20px;border:0;border-radius:6px;background:#1f4e79;color:#fff;cursor:pointer}"
        "label{display:block;margin:10px 0;font-size:16px}textarea{width:100%;box-sizing:border-box;"
        "min-height:90px}a{color:#1f4e79}.note{color:#555;font-size:14px}.ok{color:#176b2c}")


def page(locale: str, title: str, body_html: str, *, status_note: str | None = None) -> str:
    """A complete HTML page; ``body_html`` must already be escaped."""
    direction = "rtl" if locale.split("-")[0] in RTL else "ltr"
    note = f'<p class="ok" role="status">{escape(status_note)}</p>' if status_note else ""
    return (f'<!doctype html><html lang="{escape(locale)}" dir="{direction}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="robots" content="noindex">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
            f"<body><main><h1>{escape(title)}</h1>{note}{body_html}</main></body></html>")


def invalid(locale: str) -> str:
    return page(locale, t(locale, "invalid_title"), f"<p>{escape(t(locale, 'invalid_text'))}</p>")


def unsubscribe_confirm(locale: str, *, store: str, purpose: str, action: str, prefs_url: str | None) -> str:
    label = purpose_label(locale, purpose)
    manage = f'<p class="note"><a href="{escape(prefs_url)}">{escape(t(locale, "manage"))}</a></p>' \
        if prefs_url else ""
    body = (f"<p>{escape(t(locale, 'unsubscribe_question', purpose=label, store=store))}</p>"
            f'<form method="post" action="{escape(action)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<button type="submit">{escape(t(locale, "unsubscribe_button"))}</button></form>{manage}')
    return page(locale, t(locale, "unsubscribe_title"), body)


def unsubscribed(locale: str, *, store: str, purpose: str, prefs_url: str | None) -> str:
    label = purpose_label(locale, purpose)
    manage = f'<p class="note"><a href="{escape(prefs_url)}">{escape(t(locale, "manage"))}</a></p>' \
        if prefs_url else ""
    body = f"<p>{escape(t(locale, 'done_text', purpose=label, store=store))}</p>{manage}"
    return page(locale, t(locale, "done_title"), body)


def preferences(locale: str, *, store: str, action: str, prefs: dict[str, bool], saved: bool) -> str:
    boxes = "".join(
        f'<label><input type="checkbox" name="purposes" value="{escape(p)}"{" checked" if on else ""}> '
        f"{escape(purpose_label(locale, p))}</label>" for p, on in prefs.items())
    body = (f"<p>{escape(t(locale, 'prefs_intro', store=store))}</p>"
            f'<form method="post" action="{escape(action)}"><input type="hidden" name="form" value="preferences">'
            f'{boxes}<p><button type="submit">{escape(t(locale, "save"))}</button></p></form>')
    return page(locale, t(locale, "prefs_title"), body, status_note=t(locale, "saved") if saved else None)


def csat(locale: str, *, rating: int | None, action: str, comment_saved: bool) -> str:
    """Thanks for the rating, and a form for a comment (with the rating, changeable)."""
    parts = []
    if rating is not None:
        parts.append(f"<p>{escape(t(locale, 'csat_rating', rating=rating))}</p>")
    if comment_saved:
        parts.append(f'<p class="ok" role="status">{escape(t(locale, "comment_saved"))}</p>')
    else:
        radios = "".join(f'<label style="display:inline-block;margin:0 8px"><input type="radio" name="rating" '
                         f'value="{r}"{" checked" if r == rating else ""}> {r}</label>' for r in range(1, 6))
        parts.append(f'<form method="post" action="{escape(action)}"><p>{radios}</p>'
                     f'<label>{escape(t(locale, "csat_comment"))}'
                     '<textarea name="comment" maxlength="5000"></textarea></label>'
                     f'<button type="submit">{escape(t(locale, "send"))}</button></form>')
    return page(locale, t(locale, "csat_thanks"), "".join(parts))
