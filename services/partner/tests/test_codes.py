"""The card code's rules as pure functions: RFC 6238 test vectors, the window, the payload."""

from __future__ import annotations

from partner import codes


def test_rfc_4226_vectors() -> None:
    secret = b"12345678901234567890"
    # RFC 4226 appendix D, counters 0..2, truncated to 6 digits there; ours keep 8.
    assert [codes.code_for(secret, c)[-6:] for c in range(3)] == ["755224", "287082", "359152"]


def test_a_code_is_good_for_the_window_around_now_and_no_longer() -> None:
    secret = codes.new_secret()
    now = 1_800_000_000.0
    code = codes.code_for(secret, codes.counter_at(now))
    assert codes.matching_counter(secret, code, now) == codes.counter_at(now)
    assert codes.matching_counter(secret, code, now + codes.STEP * codes.WINDOW) is not None
    assert codes.matching_counter(secret, code, now + codes.STEP * (codes.WINDOW + 1)) is None
    assert codes.matching_counter(codes.new_secret(), code, now) is None


def test_the_payload_round_trips_and_nothing_else_parses() -> None:
    secret, number = codes.new_secret(), codes.new_card_number()
    scanned = codes.payload(number, secret, 1_800_000_000.0)
    parsed = codes.parse(scanned)
    assert parsed is not None and parsed[0] == number
    for bad in ("", "KZ1-123-45678901", f"KZ2-{number}-12345678", f"KZ1-{number}-1234567", f"{scanned}\x00"):
        assert codes.parse(bad) is None


def test_the_qr_image_is_drawn_here_from_the_payload() -> None:
    svg = str(codes.qr_svg("KZ1-123456789012-12345678"))
    assert svg.startswith("<svg") and "<path" in svg and "http" not in svg.split(">", 1)[1]
