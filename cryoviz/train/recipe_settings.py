"""Recipe settings written as text: ``KEY=VALUE`` (``cryoviz train --set``, ``bench --sweep``,
the napari training dock), converted to the type of the :class:`~cryoviz.train.recipes.Recipe`
field they name."""

from __future__ import annotations

import math
import typing

from cryoviz.errors import InputError
from cryoviz.train.recipes import Recipe

__all__ = ["parse_setting"]

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _setting_value(key: str, kind: type, text: str, source: str):
    """``text`` as the type of Recipe field ``key`` (``kind``, possibly optional)."""
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    expected = {bool: "true or false", int: "an integer", float: "a finite number",
                str: "text"}[base]
    if base is bool:
        word = text.strip().lower()
        if word in _TRUE + _FALSE:
            return word in _TRUE
    else:
        try:
            value = base(text.strip()) if base is not str else text
        except ValueError:
            value = None
        if value is not None and (base is not float or math.isfinite(value)):
            return value
    raise InputError(None, f"{source} {key}", expected + (" or none" if optional else ""), text)


def parse_setting(text: str, source: str = "--set") -> tuple[str, object]:
    """One ``KEY=VALUE`` recipe setting, the value converted to the field's type.

    Parameters
    ----------
    text
        E.g. ``"gaussians=512"``, ``"beta=0.5"``, ``"encoder_centre=false"``;
        dashes in the key read as underscores. ``none`` is accepted for optional
        fields (``box=none``) and means "not given": the default, or a resumed
        run's own value.
    source
        The option named in errors.

    Returns
    -------
    tuple
        ``(key, value)``; the value is checked against the recipe later
        (:meth:`Recipe.validate`, through :func:`get_recipe`).

    Raises
    ------
    InputError
        Naming ``source``: no ``=``, an unknown setting (the known ones are
        listed), or a value that is not of the setting's type.
    """
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    hints = typing.get_type_hints(Recipe)
    hints.pop("name", None)
    if not sep or not key:
        raise InputError(None, source, "KEY=VALUE (a recipe setting)", text)
    if key not in hints:
        raise InputError(None, source, f"a recipe setting, one of {', '.join(sorted(hints))}",
                         key)
    return key, _setting_value(key, hints[key], value, source)
