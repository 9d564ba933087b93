"""Every page speaks Japanese and English: no template shows text outside a translation call, every
message a template or the kit's wording uses has a Japanese translation in the kit's or its
service's catalogue, and a page rendered for a Japanese browser (or the header's switch) is in
Japanese with ¥ and dates formatted for Japan."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract
from kizuna.kit import i18n

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = sorted(
    [*ROOT.glob("services/*/src/*/templates"), ROOT / "libs/kit/src/kizuna/kit/web/templates"], key=str
)
TEMPLATES = sorted(p for d in TEMPLATE_DIRS for p in d.rglob("*.html"))
KIT_LOCALE = ROOT / "libs/kit/src/kizuna/kit/web/locale"
# Visible attributes a member reads (or hears from a screen reader).
VISIBLE_ATTRIBUTES = {"placeholder", "aria-label", "title", "alt", "data-label", "data-template"}
BLANK = "\x00"
# Text that needs no translation: numbers, symbols, the brand, units read alike in both languages.
UNTRANSLATED_WORDS = re.compile(r"\b(?:Kizuna|pt|UTC)\b")
SYMBOLS = re.compile(r"^[\s\d.,:;·•→×—–()+\-/|%¥$€£…›★?!&#;*'\"]*$")  # noqa: RUF001


# A message's translation: one string, or one per plural form.
Translation = str | tuple[str, ...] | list[str] | None


def _catalogue(directory: Path) -> dict[str, Translation]:
    path = directory / "ja.po"
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        return {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in read_po(handle) if m.id}


def _translated(translation: Translation) -> bool:
    """Whether a message is translated: its string, or every one of its plural forms, not empty
    (babel reads an untranslated plural as `('',)`, which is not empty itself)."""
    if translation is None or isinstance(translation, str):
        return bool(translation)
    return bool(translation) and all(translation)


def _singular(message: str | tuple[str | None, ...] | None) -> str | None:
    """The message a template asks for: the singular of an ngettext."""
    if isinstance(message, str):
        return message
    assert message is not None, "a template's messages are string literals"
    return message[0]


def _locale_of(template: Path) -> Path:
    for parent in template.parents:
        if parent.name == "templates":
            return parent.parent / "locale" if parent.parent.name != "web" else KIT_LOCALE
    raise AssertionError(template)


class _VisibleText(HTMLParser):
    """Text nodes and visible attribute values of a template whose Jinja parts are blanked out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "code"):
            self._skip += 1
        for name, value in attrs:
            if name in VISIBLE_ATTRIBUTES and value:
                self._check(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "code") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._check(data)

    def _check(self, text: str) -> None:
        for piece in text.replace(BLANK, "\n").split("\n"):
            piece = piece.strip()
            if piece and not SYMBOLS.match(UNTRANSLATED_WORDS.sub("", piece)) and re.search(r"[A-Za-z]{2,}", piece):
                self.found.append(piece)


def _bare_text(source: str) -> list[str]:
    blanked = re.sub(r"{{.*?}}|{%.*?%}|{#.*?#}", BLANK, source, flags=re.S)
    parser = _VisibleText()
    parser.feed(blanked)
    parser.close()
    return parser.found


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_template_shows_untranslated_text(template: Path) -> None:
    assert _bare_text(template.read_text()) == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_message_of_a_template_has_a_japanese_translation(template: Path) -> None:
    known = {**_catalogue(KIT_LOCALE), **_catalogue(_locale_of(template))}
    with template.open("rb") as handle:
        messages = [
            _singular(m[2])
            for m in babel_extract(handle, ("_", "gettext", "ngettext"), [], {"extensions": "jinja2.ext.i18n"})
        ]
    missing = [m for m in messages if m and not _translated(known.get(m))]
    assert missing == []


def test_the_kits_wording_has_japanese_translations() -> None:
    from kizuna.kit.web import wording

    known = _catalogue(KIT_LOCALE)
    missing = [m for m in wording.MESSAGES if not _translated(known.get(m))]
    assert missing == []


def test_the_check_finds_text_outside_a_translation_call() -> None:
    assert _bare_text('<p>Hello there</p><input placeholder="Your name">') == ["Hello there", "Your name"]
    assert _bare_text('<p>{{ _("Hello there") }} · 12 pt</p><input placeholder="{{ _(\'Your name\') }}">') == []


def test_the_language_follows_the_cookie_then_the_browser() -> None:
    assert i18n.negotiate(None, "ja-JP,ja;q=0.9,en;q=0.8") == "ja"
    assert i18n.negotiate(None, "fr-FR, en;q=0.5, ja;q=0.7") == "ja"
    assert i18n.negotiate(None, "fr-FR") == "en"
    assert i18n.negotiate("en", "ja") == "en"
    assert i18n.negotiate("xx", "ja;q=0") == "en"
    assert i18n.negotiate(None, "ja;q=abc, en") == "en"
