"""Patients reserved for an independent evaluation: never used by this project for training, tuning, model choice or
evaluation (issue #29). `sdseg preprocess` leaves them out, and refuses an input that holds nothing else, unless
``--include-reserved`` is given.

- LIDC-IDRI: LIDC-IDRI-0901 and above (the Pulmoseg crops, ``--source lidc-slices``).
- IBSI soft-tissue sarcoma: STS_041 .. STS_051 (``--source ibsi-sts``).
"""

from __future__ import annotations

import re

from sdseg.data.cases import SourceError

RESERVED_RULES = {  # what: (patient id pattern with the number as group 1, first reserved number, last or None)
    "LIDC-IDRI": (re.compile(r"LIDC-IDRI-(\d{4})"), 901, None),
    "STS": (re.compile(r"STS_(\d{3})"), 41, 51),
}
INCLUDE_RESERVED_HINT = "--include-reserved overrides this; this project never gives it"


def is_reserved(patient: str) -> bool:
    """Whether ``patient`` (LIDC-IDRI-NNNN or STS_NNN) is a reserved patient."""
    for pattern, first, last in RESERVED_RULES.values():
        match = pattern.fullmatch(patient)
        if match:
            number = int(match.group(1))
            return number >= first and (last is None or number <= last)
    return False


def reserved_rule(what: str) -> str:
    """The reserved range of a collection in words, e.g. 'LIDC-IDRI-0901 and above'."""
    pattern, first, last = RESERVED_RULES[what]
    name = {"LIDC-IDRI": "LIDC-IDRI-{:04d}", "STS": "STS_{:03d}"}[what]
    return name.format(first) + (" and above" if last is None else " .. " + name.format(last))


def unreserved(patients, what: str, include_reserved: bool, where: str) -> tuple[list[str], list[str]]:
    """(patients kept, reserved patients left out) of ``patients`` (sorted). Raises :class:`SourceError` (one line)
    when every patient of ``where`` is reserved and ``include_reserved`` is False: nothing would be left to use."""
    patients = sorted(set(patients))
    reserved = [] if include_reserved else [p for p in patients if is_reserved(p)]
    kept = [p for p in patients if p not in set(reserved)]
    if reserved and not kept:
        raise SourceError(f"{where}: {', '.join(reserved[:3])}{' ...' if len(reserved) > 3 else ''} "
                          f"{'is' if len(reserved) == 1 else 'are'} reserved for an independent evaluation "
                          f"({reserved_rule(what)}) and never used; {INCLUDE_RESERVED_HINT}")
    return kept, reserved
