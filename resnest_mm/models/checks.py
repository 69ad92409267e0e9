"""Argument checks shared by the backbones: each failure names the argument, the value and what
is allowed, so a wrong config fails at build time rather than deep inside a forward pass."""
from collections.abc import Iterable, Sequence
from typing import Any, Optional


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


def check_bool(owner: str, name: str, value: Any) -> None:
    # Truthiness would read a string such as 'False' as True.
    if not isinstance(value, bool):
        fail(owner, name, value, 'expected True or False')


def check_bool_seq(owner: str, name: str, value: Any, length: Optional[int],
                   length_reason: str = '') -> tuple[bool, ...]:
    """A sequence of booleans, of ``length`` values unless ``length`` is None."""
    count = 'booleans' if length is None else f'{length} booleans ({length_reason})'
    if (not isinstance(value, Sequence) or isinstance(value, str)
            or (length is not None and len(value) != length)):
        fail(owner, name, value, f'expected {count}')
    if not all(isinstance(v, bool) for v in value):
        fail(owner, name, value, f'expected {count}, each True or False')
    return tuple(value)


def check_cfg(owner: str, name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict) or 'type' not in value:
        fail(owner, name, value, "expected a config dict with a 'type' key"
             + (' or None' if optional else ''))


def layer_class(layer: Any) -> Any:
    """The class a config's ``type`` names, looked up as mmcv's builders do (the current default
    scope, then mmengine's); None when none is registered. A class is returned as it is."""
    import inspect
    from mmengine.registry import MODELS
    if inspect.isclass(layer):
        return layer
    with MODELS.switch_scope_and_registry(None) as registry:
        return registry.get(layer)


def check_norm_kind(owner: str, norm_cfg: dict) -> None:
    """``norm_cfg`` builds a norm of 4-D maps (batch, group or 2-D instance norm)."""
    import inspect
    import torch.nn as nn
    layer = layer_class(norm_cfg['type'])
    if not inspect.isclass(layer):
        return  # unknown types are reported by check_layer_type
    # Refused by kind, not allowed by kind: mmcv's SyncBatchNorm ('MMSyncBN') is a plain Module.
    wrong = (nn.BatchNorm1d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm3d, nn.LayerNorm)
    if issubclass(layer, wrong):
        fail(owner, 'norm_cfg', norm_cfg, f'{layer.__name__} does not normalise 4-D feature '
             "maps; expected a 2-D batch, group or instance norm (e.g. 'BN', 'SyncBN', 'GN', "
             "'IN')")


def check_layer_type(owner: str, name: str, cfg: dict) -> None:
    """``cfg['type']`` names a layer that mmcv's builders will find (they look it up as done
    here, in the current default scope and then mmengine's, and fail with a message that names
    neither the argument nor the type)."""
    from mmengine.registry import MODELS
    layer = cfg['type']
    if layer_class(layer) is None:
        with MODELS.switch_scope_and_registry(None) as registry:
            scope = registry.scope
        where = 'mmengine' if scope == 'mmengine' else f'the {scope!r} scope or mmengine'
        fail(owner, name, cfg, f'no layer type {layer!r} is registered in {where} (misspelt, or '
             'its package not imported?)')
