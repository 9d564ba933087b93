"""Japanese and English for every page: the member's language, message catalogues, gettext.

The language is the `kz_lang` cookie (the header's switch sets it; cookies are shared by the
services of one site, so every service honours one choice), else the browser's Accept-Language,
else English. `PageMiddleware` (kizuna.kit.web) sets it for the request; templates translate with
Jinja2's i18n extension (`{{ _("Cart") }}`, `{% trans %}...{% endtrans %}`) and Python code with
`gettext` ("_") from here, both at the moment they render, in the request's language.

Catalogues are gettext PO files read with Babel: the kit's (`kizuna/kit/web/locale/<lang>.po`,
the layout and shared wording) and each service's (`<package>/locale/<lang>.po`, found beside
its `templates/` by `page_templates`). English is the source language and needs no catalogue.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path

from babel.messages.pofile import read_po

SUPPORTED = ("en", "ja")
DEFAULT = "en"
COOKIE = "kz_lang"
NAMES = {"en": "English", "ja": "日本語"}

_current: ContextVar[str] = ContextVar("kizuna_lang", default=DEFAULT)
_catalogues: dict[str, dict[str, str | tuple[str, ...]]] = {lang: {} for lang in SUPPORTED}
_loaded: set[Path] = set()


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The member's language: their choice (cookie), else their browser's first supported one."""
    if cookie in SUPPORTED:
        return cookie
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")):
        fields = part.strip().split(";")
        tag = fields[0].strip().lower()
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.split("-")[0]
        if primary in SUPPORTED and quality > 0:
            ranked.append((-quality, index, primary))
    return sorted(ranked)[0][2] if ranked else DEFAULT


def set_language(lang: str) -> None:
    """The language of the request being served (PageMiddleware calls it)."""
    _current.set(lang if lang in SUPPORTED else DEFAULT)


def language() -> str:
    return _current.get()


def load(directory: Path) -> None:
    """Add the catalogues in `directory` (`<lang>.po`); later ones win for the same message."""
    directory = directory.resolve()
    if directory in _loaded or not directory.is_dir():
        return
    _loaded.add(directory)
    for lang in SUPPORTED:
        path = directory / f"{lang}.po"
        if not path.exists():
            continue
        with path.open("rb") as handle:
            catalogue = read_po(handle, locale=lang)
        for message in catalogue:
            if not message.id or not message.string:
                continue
            key = message.id if isinstance(message.id, str) else message.id[0]
            value = message.string
            if isinstance(value, (tuple, list)):
                if all(value):
                    _catalogues[lang][key] = tuple(value)
            elif not message.fuzzy:
                _catalogues[lang][key] = value


def translation(message: str, lang: str) -> str | None:
    """The catalogue's text for `message` in `lang`, or None when it has none."""
    found = _catalogues.get(lang, {}).get(message)
    if isinstance(found, tuple):
        return found[0]
    return found


def gettext(message: str) -> str:
    """`message` in the request's language (English when no translation exists)."""
    lang = _current.get()
    if lang == DEFAULT:
        return message
    return translation(message, lang) or message


def ngettext(singular: str, plural: str, n: int) -> str:
    lang = _current.get()
    if lang != DEFAULT:
        found = _catalogues.get(lang, {}).get(singular)
        if isinstance(found, tuple):
            return found[0]  # Japanese has one plural form
        if isinstance(found, str):
            return found
    return singular if n == 1 else plural


_ = gettext

load(Path(__file__).parent / "web" / "locale")
