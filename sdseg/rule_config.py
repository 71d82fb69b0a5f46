"""Rules whose parameters a model's config may override: ``config["propagation"][key]`` over a dataclass's
defaults (sdseg.scale_search.ScaleRule, sdseg.lesion_jumps.JumpRule, sdseg.lesion_length.LengthRule)."""

from __future__ import annotations

from dataclasses import fields


def rule_of_config(rule_class, config: dict, key: str):
    """``rule_class`` with the defaults overridden by ``config["propagation"][key]`` (numbers); ValueError naming an
    unknown key."""
    given = dict((config.get("propagation") or {}).get(key) or {})
    known = {field.name for field in fields(rule_class)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown {key} key(s) {unknown}; known: {sorted(known)}")
    return rule_class(**{name: float(value) for name, value in given.items()})
