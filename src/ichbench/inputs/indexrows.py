"""The header index's rows as numpy columns, and the plain CSV reading and writing of a preprocessing process.

pandas' import is about 0.17 CPU-s of every `ichbench preprocess` process (a third of the start-up of a
short uncompressed series, issue 24). The preprocessing of DICOM series needs only a few columns of
index.csv and series_candidates.csv, one table per series and two small CSV files written at the end,
so those go through here. A file these readers do not recognise as the pipeline's own (a missing column,
a value that is not of the column's kind) is left to the pandas code, which then reads it as before:
`IndexFormatError`.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

#: index.csv's columns that hold integers (dicom_index writes 0 where a header lacks the field)
INT_COLUMNS = ("rows", "columns", "instance_number", "bits_allocated", "bits_stored", "pixel_representation")
#: ... backslash-separated numbers (None where empty), and floats (NaN where empty or not a number)
TUPLE_COLUMNS = ("pixel_spacing", "orientation", "position")
FLOAT_COLUMNS = ("slice_thickness",)
#: the columns a DICOM series' plan reads (dicomio.plan_series and finish_series)
PLAN_COLUMNS = ("path", "patient_id", "study_uid", "series_uid", "sop_uid", "rows", "columns", "pixel_spacing",
                "slice_thickness", "orientation", "position", "instance_number")


class IndexFormatError(ValueError):
    """A table these plain readers leave to pandas (not an error of the data: pandas reads it)."""


class IndexRows:
    """Rows of the header index as equal-length numpy columns (object arrays for text and tuples).

    What the DICOM path uses of a DataFrame: a column by name, `len`, `in`, `take` and `assign`, and the
    first value of a column (`first`). `to_frame` gives the DataFrame (with the dtypes it came with, where it
    came from one)."""

    __slots__ = ("_cols", "_dtypes")

    def __init__(self, columns: Mapping[str, np.ndarray], dtypes: Mapping[str, object] | None = None):
        self._cols = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in self._cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self._dtypes = dict(dtypes or {})

    @classmethod
    def from_frame(cls, frame) -> "IndexRows":
        """The columns of a DataFrame (its index is not kept: rows are by position)."""
        return cls({c: frame[c].to_numpy() for c in frame.columns}, {c: frame[c].dtype for c in frame.columns})

    @classmethod
    def of(cls, files) -> "IndexRows":
        """`files` as IndexRows (a DataFrame is converted; IndexRows are returned as they are)."""
        return files if isinstance(files, cls) else cls.from_frame(files)

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[name]

    def first(self, name: str):
        return self._cols[name][0]

    def take(self, positions) -> "IndexRows":
        pos = np.asarray(positions, np.intp)
        return IndexRows({k: v[pos] for k, v in self._cols.items()}, self._dtypes)

    def assign(self, **columns) -> "IndexRows":
        n = len(self)
        cols = dict(self._cols)
        for k, v in columns.items():
            cols[k] = np.full(n, v, object) if isinstance(v, str) or np.ndim(v) == 0 else np.asarray(v)
        return IndexRows(cols, {k: t for k, t in self._dtypes.items() if k not in columns})

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(dict(self._cols))
        for k, t in self._dtypes.items():
            if k in frame and frame[k].dtype != t:
                frame[k] = frame[k].astype(t)
        return frame


def first_of_each(values: np.ndarray) -> np.ndarray:
    """Whether each value is the first of its kind (pandas' `~duplicated()`: NaN and None equal themselves)."""
    seen: set = set()
    first = np.zeros(len(values), bool)
    for i, v in enumerate(values.tolist()):
        try:
            missing = v is None or bool(v != v)
        except TypeError:          # pd.NA
            missing = True
        key = ("missing",) if missing else v
        if key not in seen:
            seen.add(key)
            first[i] = True
    return first


def parse_tuple(text) -> tuple[float, ...] | None:
    """index.csv's backslash-separated numbers as a tuple (None for an empty or missing value)."""
    if not isinstance(text, str) or not text:
        return None
    return tuple(float(x) for x in text.split("\\"))


def csv_records(f, path, required: Sequence[str] = ()) -> tuple[list[str], Iterator[list[str]]]:
    """The header of the open CSV file `f` and an iterator of its rows (lists of text). IndexFormatError where
    it is empty, lacks a `required` column or repeats one, or (while iterating) a row has another length."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise IndexFormatError(f"{path}: empty")
    missing = [c for c in required if c not in header]
    if missing or len(set(header)) != len(header):
        raise IndexFormatError(f"{path}: columns {missing or 'repeated'}")

    def rows() -> Iterator[list[str]]:
        for row in reader:
            if len(row) != len(header):
                raise IndexFormatError(f"{path}: a row of {len(row)} fields, not {len(header)}")
            yield row

    return header, rows()


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan        # as pd.to_numeric(errors="coerce")


def _int(text: str, path, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise IndexFormatError(f"{path}: column {name} holds {text!r}, not an integer") from None


def read_series_rows(path: str | os.PathLike, series_uids: Iterable[str]) -> dict[str, IndexRows]:
    """index.csv's rows of the named series, one IndexRows per series (file order kept; series without rows
    are absent), with the PLAN_COLUMNS and any others as text. IndexFormatError where the file is not the
    header index as `preprocess.write_index` writes it."""
    wanted = set(series_uids)
    with open(path, newline="", encoding="utf-8") as f:
        header, records = csv_records(f, path, PLAN_COLUMNS)
        at = header.index("series_uid")
        groups: dict[str, list[list[str]]] = {}
        for row in records:
            if row[at] in wanted:
                groups.setdefault(row[at], []).append(row)
    out = {}
    for suid, rows in groups.items():
        cols: dict[str, np.ndarray] = {}
        for j, name in enumerate(header):
            texts = [r[j] for r in rows]
            if name in INT_COLUMNS:
                cols[name] = np.array([_int(t, path, name) for t in texts], np.int64)
            elif name in FLOAT_COLUMNS:
                cols[name] = np.array([_float(t) for t in texts], np.float64)
            elif name in TUPLE_COLUMNS:
                values = np.empty(len(texts), object)
                try:
                    values[:] = [parse_tuple(t) for t in texts]
                except ValueError:
                    raise IndexFormatError(f"{path}: column {name} is not numbers separated by \\") from None
                cols[name] = values
            else:
                values = np.empty(len(texts), object)
                values[:] = texts
                cols[name] = values
        out[suid] = IndexRows(cols)
    return out


_TRUE, _FALSE = "True", "False"


def read_chosen(path: str | os.PathLike) -> list[dict[str, str]]:
    """series_candidates.csv's selected rows (selected is True), each as its text fields. IndexFormatError
    where the file is not as `preprocess.build_index` writes it: a `selected` other than True / False, or an
    empty patient_id, series_uid or scan_id (which pandas would read as NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        header, records = csv_records(f, path, ("series_uid", "patient_id", "selected"))
        out = []
        for record in records:
            row = dict(zip(header, record))
            if row["selected"] not in (_TRUE, _FALSE):
                raise IndexFormatError(f"{path}: selected is {row['selected']!r}")
            if row["selected"] == _TRUE:
                if not row["series_uid"] or not row["patient_id"] or ("scan_id" in row and not row["scan_id"]):
                    raise IndexFormatError(f"{path}: an empty ID")
                out.append(row)
    return out


def _cell(value, floats: bool) -> str:
    """One value as pandas' to_csv writes it in a column of its kind (`floats`: a float64 column)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if floats:
        v = float(value)
        return "" if math.isnan(v) else repr(v)
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """`rows` (dicts; missing keys empty) as pandas' `DataFrame(rows, columns=columns).to_csv(index=False)`
    writes them, for the plain values a preprocessing process has: text, bool, int, float (a column of ints
    and floats is written as floats, NaN and None as empty)."""
    floats = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        present = [v for v in vals if v is not None]
        floats[c] = (bool(present) and all(_is_number(v) for v in present)
                     and (len(present) < len(vals) or any(isinstance(v, (float, np.floating)) for v in present)))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c), floats[c]) for c in columns])
