"""Argument checks shared by the backbones: each failure names the argument, the value and what
is allowed, so a wrong config fails at build time rather than deep inside a forward pass."""
from collections.abc import Iterable, Sequence
from typing import Any


def fail(owner: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f'{owner}: {name}={value!r} is not valid; {allowed}.')


def check_choice(owner: str, name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(owner, name, value, f'expected one of {choices}')


def check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(owner, name, value, f'expected an integer >= {minimum}')


def check_int_seq(owner: str, name: str, value: Any, length: int, minimum: int,
                  length_reason: str) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        fail(owner, name, value, f'expected a sequence of {length} integers')
    if len(value) != length:
        fail(owner, name, value, f'expected {length} values ({length_reason})')
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            fail(owner, name, value, f'every value must be an integer >= {minimum}')
    return tuple(value)


def check_bool_seq(owner: str, name: str, value: Any, length: int, length_reason: str
                   ) -> tuple[bool, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length:
        fail(owner, name, value, f'expected {length} booleans ({length_reason})')
    return tuple(bool(v) for v in value)


def check_cfg(owner: str, name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict) or 'type' not in value:
        fail(owner, name, value, "expected a config dict with a 'type' key"
             + (' or None' if optional else ''))
