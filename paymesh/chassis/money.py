"""Money as int64 minor units plus an ISO 4217 code; arithmetic that refuses to overflow."""

from __future__ import annotations

INT64_MAX = 2**63 - 1

# Active ISO 4217 codes (list one, 2026) and their minor-unit exponents.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD "
        "CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD "
        "HKD HNL HTG HUF IDR ILS INR IRR ISK JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA "
        "MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR "
        "RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD "
        "TWD TZS UAH USD UYU UZS VES WST XCD XCG YER ZAR ZMW ZWG".split(),
        2,
    ),
    **dict.fromkeys("BIF CLP DJF GNF JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    "CLF": 4,
    "UYW": 4,
}


class MoneyError(ValueError):
    """An amount or currency that cannot be money; the message says which."""


def is_currency(code: str) -> bool:
    return code in _EXPONENTS


def exponent(code: str) -> int:
    try:
        return _EXPONENTS[code]
    except KeyError:
        raise MoneyError(f"{code!r} is not an ISO 4217 currency code") from None


def checked_add(a: int, b: int) -> int:
    total = a + b
    if total > INT64_MAX or total < -INT64_MAX - 1:
        raise MoneyError("amount exceeds the int64 range of amount_minor")
    return total


def checked_mul(quantity: int, unit_minor: int) -> int:
    product = quantity * unit_minor
    if product > INT64_MAX or product < -INT64_MAX - 1:
        raise MoneyError("amount exceeds the int64 range of amount_minor")
    return product


def order_total(lines: list[tuple[int, int]]) -> int:
    """Sum of quantity × unit price over (quantity, unit_price_minor) lines, overflow checked."""
    total = 0
    for quantity, unit in lines:
        total = checked_add(total, checked_mul(quantity, unit))
    return total


def format_minor(amount_minor: int, currency: str) -> str:
    """For people: 1999 USD -> '19.99 USD'."""
    exp = exponent(currency)
    if exp == 0:
        return f"{amount_minor} {currency}"
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exp)
    return f"{sign}{whole}.{frac:0{exp}d} {currency}"
