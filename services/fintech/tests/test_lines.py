"""Card, statement and bank lines read in plain words, in English and Japanese, chosen by what the
line is: no stored developer wording ("Payment (bank 5000, points 0)") and no internal ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fintech
import pytest
from fintech import lines
from kizuna.kit import i18n


@pytest.fixture
def language() -> Iterator[None]:
    i18n.load(Path(fintech.__file__).parent / "locale")
    yield
    i18n.set_language("en")


def test_a_card_line_reads_as_what_happened(language: None) -> None:
    i18n.set_language("en")
    assert lines.card_line("purchase", "Kizuna Shop") == "Kizuna Shop"
    assert lines.card_line("refund", "Refund: Kizuna Shop") == "Refund from Kizuna Shop"
    assert lines.card_line("payment", "Payment (bank 5000, points 0)") == "Payment of ¥5,000 from your bank"
    assert lines.card_line("payment", "Payment (bank 0, points 300)") == "Payment with 300 pt"
    assert lines.card_line("payment", "Payment (bank 700, points 300)") == "Payment: ¥700 from your bank and 300 pt"
    i18n.set_language("ja")
    assert lines.card_line("refund", "Refund: Kizuna Shop") == "Kizuna Shopからの返金"
    assert lines.card_line("payment", "Payment (bank 5000, points 0)") == "銀行口座から¥5,000のお支払い"


@pytest.mark.parametrize(
    ("kind", "memo", "amount", "english", "japanese"),
    [
        ("bank_top_up", "Top-up", 10_000, "Test top-up", "テスト入金"),
        ("bank_transfer", "Transfer from mbr_a1b2c3d4 to mbr_e5f6a7b8", -3_000, "Sent to another member", None),
        ("bank_transfer", "Transfer from mbr_e5f6a7b8 to mbr_a1b2c3d4", 1_500, "Received from another member", None),
        ("card_bill_bank_part", "Kizuna Card bill", -5_000, "Kizuna Card bill", "Kizunaカードのご請求"),
        ("fund_buy_bank_part", "Kizuna fund purchase", -30_000, "Fund purchase", "投資信託の購入"),
        ("fund_buy_bank_part_returned", "payment failed", 30_000, "Returned: the payment did not go through", None),
        (
            "fund_sell",
            "Sell Kizuna World Equity Index",
            4_282,
            "Fund sale: Kizuna World Equity Index",
            "投資信託の売却：Kizuna 全世界株式インデックス",  # noqa: RUF001  (Japanese punctuation)
        ),
    ],
)
def test_a_bank_line_reads_as_what_happened(
    language: None, kind: str, memo: str, amount: int, english: str, japanese: str | None
) -> None:
    i18n.set_language("en")
    assert lines.bank_line(kind, memo, amount) == english
    i18n.set_language("ja")
    in_japanese = lines.bank_line(kind, memo, amount)
    assert in_japanese != english and "mbr_" not in in_japanese
    if japanese is not None:
        assert in_japanese == japanese
