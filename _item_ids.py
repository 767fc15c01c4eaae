"""One rule for item IDs: the training data's item IDs keep their type, and every item ID given later (test
data, predict_next_batch, evaluation candidates, recommendations, the command lines' files, HTTP requests) is
converted to that type when the conversion loses nothing; any other value is an error that names both types.
So the format a file comes in (text files hold strings, Parquet/pickle files and Python lists may hold
numbers) does not change which items match.

Lossless conversions: between integer widths (int32 <-> int64); an integer and its decimal string ('123' <->
123, no sign '+', leading zeros or spaces, so that exactly one string stands for each number); a float holding
an integer up to 2**53 and that integer or its string (5.0 -> 5, '5'); a string and the float it spells exactly ('0.5' ->
0.5, float IDs only). A model whose training IDs mix types (or are booleans) compares IDs as given. Missing
values (None, NaN) are unknown items, not errors. Session IDs are only keys and are not converted.
"""
import math
import re

import numpy as np
import pandas as pd

if __package__:
    from ._params import GRU4RecError
else:
    from _params import GRU4RecError

INT_TEXT = re.compile(r'-?(0|[1-9][0-9]*)')
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
FEW = 256   # up to this many values (a click, a request) are converted one by one, without array machinery
TARGET_DTYPE = {'int': np.int64, 'float': np.float64, 'str': object, 'mixed': object}


def kind_of(ids):
    """'int', 'float', 'str' or 'mixed': the type of a model's training item IDs (an Index or array)."""
    dtype = getattr(ids, 'dtype', None)
    if dtype is None:
        return kind_of(pd.Index(list(ids)))
    if pd.api.types.is_bool_dtype(dtype):
        return 'mixed'
    if pd.api.types.is_integer_dtype(dtype):
        return 'int'
    if pd.api.types.is_float_dtype(dtype):
        return 'float'
    if isinstance(dtype, pd.StringDtype) or getattr(dtype, 'kind', '') in 'US':
        return 'str'
    inferred = pd.api.types.infer_dtype(ids, skipna=False)
    return {'string': 'str', 'empty': 'str', 'integer': 'int', 'floating': 'float'}.get(inferred, 'mixed')


def convert(value, kind):
    """`value` as an item ID of `kind` (see kind_of), or None if that would lose something (see the module)."""
    if kind == 'mixed':
        return value
    if isinstance(value, str):
        value = str(value)   # (np.str_ -> str)
        if kind == 'str':
            return value
        if INT_TEXT.fullmatch(value):
            return convert(int(value), kind)
        if kind == 'float':
            try:
                f = float(value)
            except ValueError:
                return None
            return f if math.isfinite(f) and repr(f) == value else None
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if kind == 'int':
            return v if INT64_MIN <= v <= INT64_MAX else None
        if kind == 'str':
            return str(v)
        return float(v) if abs(v) <= 2 ** 53 else None
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if kind == 'float':
            return f if math.isfinite(f) else None
        if math.isfinite(f) and f.is_integer() and abs(f) <= 2 ** 53:   # (beyond: not every integer is a float)
            return convert(int(f), kind)
    return None


def is_missing(value):
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value is pd.NA


def to_model_ids(values, ids, what, kind=None):
    """(values converted to the type of the training item IDs `ids`, a mask of missing values) by `convert`.
    Missing values stay missing (they are unknown items); a value that does not convert raises GRU4RecError
    naming the two types and a few such values. what: the values' name in that message. kind: kind_of(ids),
    if known."""
    kind = kind_of(ids) if kind is None else kind
    if isinstance(values, (list, tuple)) and len(values) <= FEW:   # one by one: no array conversions
        missing = [is_missing(v) for v in values]
        out = [None if m else convert(v, kind) for v, m in zip(values, missing)]
        bad = [v for v, o, m in zip(values, out, missing) if o is None and not m]
        if bad:
            raise lossy(bad, type_name(values), ids, what)
        return out, np.asarray(missing, dtype=bool)
    if isinstance(values, (pd.Series, pd.Index, np.ndarray)):
        arr = values.to_numpy() if isinstance(values, (pd.Series, pd.Index)) else values
    else:   # (np.asarray would turn [1, 'a'] into strings)
        arr = np.asarray(list(values) + [None], dtype=object)[:-1]
    if arr.ndim != 1:
        raise GRU4RecError(f'The {what} must be a flat list of item IDs')
    # same type already: nothing to convert (the general path below gives the same values)
    if kind == 'int' and arr.dtype.kind == 'i':
        return arr.astype(np.int64, copy=False), np.zeros(len(arr), dtype=bool)
    if kind == 'float' and arr.dtype.kind == 'f':
        return arr.astype(np.float64, copy=False), np.isnan(arr)
    if kind == 'str' and (arr.dtype.kind == 'U' or pd.api.types.infer_dtype(arr, skipna=True) == 'string'):
        return arr.astype(object, copy=False), np.asarray(pd.isna(arr), dtype=bool)
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    uniques = uniques.tolist() if hasattr(uniques, 'tolist') else list(uniques)
    converted = [convert(u, kind) for u in uniques]
    bad = [u for u, c in zip(uniques, converted) if c is None]
    if bad:
        raise lossy(bad, type_name(arr), ids, what)
    missing = codes < 0
    fill = {'int': 0, 'float': np.nan}.get(kind)
    table = np.asarray(converted + [fill], dtype=TARGET_DTYPE[kind]) if kind != 'mixed' else \
        np.asarray(converted + [fill], dtype=object)
    return table[codes], missing   # (code -1: the fill value, masked as missing)


def item_rows(ids, values, what, kind=None):
    """Row of each item ID of `values` in the training item IDs `ids` (a pandas Index), -1 for unknown or
    missing IDs, after to_model_ids (which raises for values that do not convert)."""
    converted, missing = to_model_ids(values, ids, what, kind)
    if isinstance(converted, list):
        converted = np.asarray(converted + [None], dtype=object)[:-1]
    rows = np.asarray(ids.get_indexer(converted), dtype=np.int64)
    rows[missing] = -1
    return rows


def type_name(values):
    """The type of some item IDs, for messages: the dtype, or for objects the kind of their elements."""
    dtype = getattr(values, 'dtype', None)
    if dtype is not None and getattr(dtype, 'kind', 'O') not in 'OUS' and not isinstance(dtype, pd.StringDtype):
        return str(dtype)
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    return {'string': 'str', 'integer': 'int', 'floating': 'float', 'boolean': 'bool', 'mixed-integer-float':
            'int and float', 'mixed-integer': 'int and other', 'mixed': 'mixed'}.get(inferred, inferred)


def model_type_name(ids):
    """The type of the training item IDs, for messages."""
    return {'int': str(ids.dtype) if pd.api.types.is_integer_dtype(ids.dtype) else 'int',
            'float': 'float64', 'str': 'str'}.get(kind_of(ids), 'mixed')


def shown(values, n=5):
    """Up to n values as plain Python reprs ('a', 12; not np.str_('a')), for messages."""
    values = list(values)
    plain = [v.item() if isinstance(v, np.generic) else v for v in values[:n]]
    return ', '.join(repr(str(v) if isinstance(v, str) else v) for v in plain) + (', ...' if len(values) > n else '')


def lossy(bad, source, ids, what):
    return GRU4RecError(f'The {what} ({source}) cannot be converted to the type of the training item IDs '
                        f'({model_type_name(ids)}) without loss: {shown(bad)}')
