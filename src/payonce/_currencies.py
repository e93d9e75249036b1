"""Currency reference data: ISO 4217 minor units and Stripe's minimum charge amounts.

``EXPONENTS`` maps every active ISO 4217 alphabetic code, lowercased, to its minor-unit
exponent (the number of decimal places between the major unit and the smallest unit an
amount is expressed in: ``usd`` 2 means cents, ``jpy`` 0 means whole yen, ``kwd`` 3 means
fils). The codes and exponents follow list "A.1 current currency & funds" published by the
ISO 4217 maintenance agency (SIX Group on behalf of ISO), as it stood in 2025: codes that
were withdrawn (for example ``hrk``, ``mro``, ``std``, ``vef``, ``zwl``, ``cuc``, ``sll``,
``ang``) are not here; their replacements (``eur``, ``mru``, ``stn``, ``ves``/``ved``,
``zwg``, ``sle``, ``xcg``) are. Fund codes from the same list (``bov``, ``che``, ``chw``,
``clf``, ``cou``, ``mxv``, ``usn``, ``uyi``, ``uyw``) are included because they carry a
minor unit like any currency.

``MIN_CHARGE`` holds Stripe's documented minimum charge amount, in minor units, for the
currencies Stripe publishes a minimum for. Currencies absent from it have no documented
minimum here; callers decide what that means.

The tables are hand-written on purpose. The standard library has no ISO 4217 table
(``locale`` knows only the current locale's formatting, not other currencies' exponents),
and ``import payonce`` must load no third-party module, so a dependency such as ``pycountry``
or ``babel`` is not an option. When ISO 4217 publishes an amendment, edit the literal below.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["EXPONENTS", "MAX_AMOUNT", "MIN_CHARGE"]

# Codes in list A.1 whose minor unit is "N.A." are left out, because an amount in them cannot
# be written as an integer count of minor units: the precious metals (xag, xau, xpd, xpt),
# the bond-market units (xba, xbb, xbc, xbd), the IMF special drawing right (xdr), the SUCRE
# (xsu), the ADB unit of account (xua), the testing code (xts) and "no currency" (xxx).
# fmt: off
EXPONENTS: Final[Mapping[str, int]] = MappingProxyType({
    "aed": 2, "afn": 2, "all": 2, "amd": 2, "aoa": 2, "ars": 2, "aud": 2, "awg": 2, "azn": 2,
    "bam": 2, "bbd": 2, "bdt": 2, "bgn": 2, "bhd": 3, "bif": 0, "bmd": 2, "bnd": 2, "bob": 2,
    "bov": 2, "brl": 2, "bsd": 2, "btn": 2, "bwp": 2, "byn": 2, "bzd": 2,
    "cad": 2, "cdf": 2, "che": 2, "chf": 2, "chw": 2, "clf": 4, "clp": 0, "cny": 2, "cop": 2,
    "cou": 2, "crc": 2, "cup": 2, "cve": 2, "czk": 2,
    "djf": 0, "dkk": 2, "dop": 2, "dzd": 2,
    "egp": 2, "ern": 2, "etb": 2, "eur": 2,
    "fjd": 2, "fkp": 2,
    "gbp": 2, "gel": 2, "ghs": 2, "gip": 2, "gmd": 2, "gnf": 0, "gtq": 2, "gyd": 2,
    "hkd": 2, "hnl": 2, "htg": 2, "huf": 2,
    "idr": 2, "ils": 2, "inr": 2, "iqd": 3, "irr": 2, "isk": 0,
    "jmd": 2, "jod": 3, "jpy": 0,
    "kes": 2, "kgs": 2, "khr": 2, "kmf": 0, "kpw": 2, "krw": 0, "kwd": 3, "kyd": 2, "kzt": 2,
    "lak": 2, "lbp": 2, "lkr": 2, "lrd": 2, "lsl": 2, "lyd": 3,
    "mad": 2, "mdl": 2, "mga": 2, "mkd": 2, "mmk": 2, "mnt": 2, "mop": 2, "mru": 2, "mur": 2,
    "mvr": 2, "mwk": 2, "mxn": 2, "mxv": 2, "myr": 2, "mzn": 2,
    "nad": 2, "ngn": 2, "nio": 2, "nok": 2, "npr": 2, "nzd": 2,
    "omr": 3,
    "pab": 2, "pen": 2, "pgk": 2, "php": 2, "pkr": 2, "pln": 2, "pyg": 0,
    "qar": 2,
    "ron": 2, "rsd": 2, "rub": 2, "rwf": 0,
    "sar": 2, "sbd": 2, "scr": 2, "sdg": 2, "sek": 2, "sgd": 2, "shp": 2, "sle": 2, "sos": 2,
    "srd": 2, "ssp": 2, "stn": 2, "svc": 2, "syp": 2, "szl": 2,
    "thb": 2, "tjs": 2, "tmt": 2, "tnd": 3, "top": 2, "try": 2, "ttd": 2, "twd": 2, "tzs": 2,
    "uah": 2, "ugx": 0, "usd": 2, "usn": 2, "uyi": 0, "uyu": 2, "uyw": 4, "uzs": 2,
    "ved": 2, "ves": 2, "vnd": 0, "vuv": 0,
    "wst": 2,
    "xaf": 0, "xcd": 2, "xcg": 2, "xof": 0, "xpf": 0,
    "yer": 2,
    "zar": 2, "zmw": 2, "zwg": 2,
})
# fmt: on

# Stripe's documented minimum charge per currency, in minor units of that currency.
# fmt: off
MIN_CHARGE: Final[Mapping[str, int]] = MappingProxyType({
    "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500,
    "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50,
    "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50, "pln": 200, "ron": 200, "sek": 300,
    "sgd": 50, "thb": 1000, "usd": 50,
})
# fmt: on

# Stripe accepts at most eight digits in minor units (99,999,999: USD 999,999.99).
MAX_AMOUNT: Final = 99_999_999
