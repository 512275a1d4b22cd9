"""The outbox folder: safe with many writers, readable by a person (a phone too), images included."""

from __future__ import annotations

import collections
import re
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from pathlib import Path

from mailer import assets
from mailer.message.mime import MailParts, build
from mailer.transport.outbox import OutboxTransport

HOSTILE_SUBJECT = "</a><script>alert(1)</script> & \"quoted\""


def _mail(i: int, *, subject: str | None = None, html: str = "<html><body><p>Hi</p></body></html>",
          kind: str = "order_delayed", locale: str = "en") -> bytes:
    return build(MailParts(from_name="Shop", from_address="shop@example.com", to_name=None,
                           to_address=f"c{i:04d}@example.com", subject=subject or f"Order #{i}", text="Hi",
                           html=html, message_id=f"<{i}.abc@example.com>",
                           date=datetime(2026, 1, 1, tzinfo=timezone.utc),
                           headers=[("X-Mailer-Kind", kind), ("Content-Language", locale)]))


def _write_many(folder: str, start: int, count: int) -> None:
    box = OutboxTransport(f"outbox://{folder}")
    for i in range(start, start + count):
        box.send(envelope_from="b@example.com", recipient=f"c{i:04d}@example.com", message=_mail(i))


def _ids(folder: Path) -> collections.Counter:
    parser = BytesHeaderParser()
    return collections.Counter(parser.parsebytes(p.read_bytes())["Message-ID"] for p in folder.glob("*.eml"))


def test_two_processes_with_threads_write_every_mail_once_and_the_index_lists_them_all(tmp_path):
    # Given one outbox folder
    folder = tmp_path / "outbox"
    # When two processes, and two threads within this one, write 4 x 40 mails into it at once
    with ProcessPoolExecutor(max_workers=2) as procs, ThreadPoolExecutor(max_workers=2) as threads:
        futures = [procs.submit(_write_many, str(folder), 0, 40), procs.submit(_write_many, str(folder), 40, 40),
                   threads.submit(_write_many, str(folder), 80, 40), threads.submit(_write_many, str(folder), 120, 40)]
        for f in futures:
            f.result()
    # Then every Message-ID is in the folder exactly once
    counts = _ids(folder)
    assert len(counts) == 160 and set(counts.values()) == {1}
    # And the index lists every mail, and no temporary file is left behind
    index = (folder / "index.html").read_text(encoding="utf-8")
    assert index.count("<tr>") == 160 + 1
    assert all(f"c{i:04d}@example.com" in index for i in range(160))
    assert list(folder.glob(".tmp-*")) == []


def test_index_escapes_what_comes_from_outside_and_reads_on_a_phone(tmp_path):
    # Given an outbox
    box = OutboxTransport(f"outbox://{tmp_path}")
    # When a mail with markup in its subject and an Arabic one arrive
    box.send(envelope_from="b@example.com", recipient="c0001@example.com", message=_mail(1, subject=HOSTILE_SUBJECT))
    box.send(envelope_from="b@example.com", recipient="c0002@example.com",
             message=_mail(2, subject="تأخر طلبك 1234#", kind="shipping_update", locale="ar"))
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    # Then the subject is shown as text, never as markup
    assert "<script>alert(1)</script>" not in index
    assert "&lt;/a&gt;&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;" in index
    assert index.count("<script>") == 1  # only the search box's own
    # And subjects and addresses pick their own text direction
    assert re.search(r'<td class="subject" dir="auto"><a [^>]*>تأخر طلبك', index)
    # And each mail shows its kind and locale, there is a search box and a phone layout
    assert '<td data-label="Kind" class="kind">shipping_update</td>' in index
    assert '<td data-label="Locale">ar</td>' in index
    assert 'type="search"' in index and 'name="viewport"' in index and "@media (max-width:600px)" in index


def test_html_copies_show_the_packaged_images_from_the_outbox_assets_folder(tmp_path):
    # Given a mail whose image uses the placeholder base URL (no MAILER_ASSET_BASE_URL)
    html = f'<html><body><img src="{assets.PLACEHOLDER_BASE_URL}/linen-shirt.png" alt=""></body></html>'
    box = OutboxTransport(f"outbox://{tmp_path}")
    # When the outbox writes it
    box.send(envelope_from="b@example.com", recipient="c0001@example.com", message=_mail(1, html=html))
    # Then the HTML copy points at assets/ next to it, and the image is there
    copy = next(tmp_path.glob("*.html"), None)
    copies = [p for p in tmp_path.glob("*.html") if p.name != "index.html"]
    assert copy is not None and len(copies) == 1
    text = copies[0].read_text(encoding="utf-8")
    assert 'src="assets/linen-shirt.png"' in text and assets.PLACEHOLDER_BASE_URL not in text
    assert (tmp_path / "assets" / "linen-shirt.png").read_bytes().startswith(b"\x89PNG")
    # And the index links that copy
    assert f'href="{copies[0].name}"' in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_packaged_images_are_small_pngs_and_every_sample_names_one_that_exists():
    # Given the shipped sample images and sample.json files
    from mailer.settings import PROJECT_ROOT

    images = {p.name: p.stat().st_size for p in assets.IMAGES_DIR.iterdir()}
    # Then each is a small PNG
    assert images and all(name.endswith(".png") and size < 8_000 for name, size in images.items())
    # And every asset: reference in the samples names one of them
    refs = set()
    for sample in Path(PROJECT_ROOT / "templates").rglob("sample.json"):
        refs |= set(re.findall(r'"asset:([^"]+)"', sample.read_text(encoding="utf-8")))
    assert refs and refs <= set(images)
