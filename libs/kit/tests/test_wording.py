"""History and statement lines in plain words: internal ids are dropped without leaving stray
spaces before punctuation."""

from __future__ import annotations

import pytest
from kizuna.kit.web.wording import line_for_member

ORDER = "ord_01M94D9G6G7ABCDEFGHJKMNPQR"
# Japanese lines use full-width brackets.
OPEN, CLOSE = "\N{FULLWIDTH LEFT PARENTHESIS}", "\N{FULLWIDTH RIGHT PARENTHESIS}"


@pytest.mark.parametrize(
    ("line", "plain"),
    [
        (f"Earned at Shop on order {ORDER}: campaign bonus", "Earned at Shop on order: campaign bonus"),
        (f"Earned at Shop on {ORDER}, twice", "Earned at Shop on, twice"),
        ("Earned at Shop on Tokoname kyusu teapot", "Earned at Shop on Tokoname kyusu teapot"),
        (f"ショップ{OPEN}注文 {ORDER}{CLOSE}で獲得予定", f"ショップ{OPEN}注文{CLOSE}で獲得予定"),
    ],
)
def test_ids_are_dropped_and_the_punctuation_closes_up(line: str, plain: str) -> None:
    assert line_for_member(line) == plain
