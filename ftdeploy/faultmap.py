"""Fault maps: the stuck cells a chip tester found on one physical chip (a March test reports
them), in physical coordinates: tile, row, column and state. The format is documented for
testers in ``docs/fault-maps.md``; this module reads, checks and writes it.

Two forms of one content (``ftdeploy-faultmap/1``):

* **CSV**, which a tester can write with a spreadsheet: a header of ``#`` lines naming the chip
  and its geometry, then the column line ``tile,row,column,state``, then one stuck cell per line,
  ``stuck-off`` or ``stuck-on``. Coordinates count from 0. A map with no cells after the column
  line is a healthy chip.
* **npz** (numpy's zip of ``.npy`` arrays), compact for large chips: ``format`` and ``chip``
  (strings), ``geometry`` ``[tiles, rows, cols]``, and the stuck cells as four equally long
  integer arrays ``tile``, ``row``, ``col``, ``state`` (1 stuck-off, 2 stuck-on).

Reading checks everything and refuses a bad map with one :class:`~ftdeploy.errors.DataError`
line naming the file, the line (CSV) or array entry (npz), and what was expected. Sizes are
bounded before anything is allocated, and nothing read can run code: CSV is parsed as text, and
each npz array's header is checked (dtype, shape) before its data is read without pickle.
"""

from __future__ import annotations

import array
import csv
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import limits
from .errors import DataError
from .files import sha256_file, write_atomic
from .nonideality import STUCK_OFF, STUCK_ON
from .placement import Geometry, Placement

FORMAT = "ftdeploy-faultmap/1"
CSV_COLUMNS = ("tile", "row", "column", "state")
#: A state's name in CSV, and its code in npz (the stuck-at kind's own state codes).
STATES = {"stuck-off": STUCK_OFF, "stuck-on": STUCK_ON}
STATE_NAMES = {code: name for name, code in STATES.items()}
SUFFIXES = (".csv", ".npz")

# Bounds checked before anything is allocated: a declared geometry or array length beyond them
# is refused, never attempted.
MAX_TILE_SIDE = 1 << 16  # rows or columns of one tile
MAX_TILES = limits.MAX_TILES
MAX_CHIP_CELLS = 1 << 40
MAX_LISTED = 1 << 26  # stuck cells one map may list (67,108,864)
MAX_CHIP_ID = 200  # characters


@dataclass(frozen=True, eq=False)
class FaultMap:
    """One chip's stuck cells. ``tile``, ``row``, ``col`` (int64) and ``state`` (uint8:
    :data:`STUCK_OFF` or :data:`STUCK_ON`) list them, one entry per cell; every other cell of the
    geometry is healthy. ``source`` names the file (or "") and ``sha256`` its bytes; ``lines``
    gives the CSV line of each entry and ``geometry_at`` where the geometry was stated, for
    messages."""

    chip: str
    geometry: Geometry
    tile: np.ndarray
    row: np.ndarray
    col: np.ndarray
    state: np.ndarray
    source: str = ""
    sha256: str | None = None
    lines: np.ndarray | None = None
    geometry_at: str = ""

    @property
    def stuck_off(self) -> int:
        return int(np.count_nonzero(self.state == STUCK_OFF))

    @property
    def stuck_on(self) -> int:
        return int(np.count_nonzero(self.state == STUCK_ON))

    def __len__(self) -> int:
        return len(self.state)


# --- checks shared by both forms ------------------------------------------------------------------


def check_chip_id(chip: str, where: str) -> str:
    chip = chip.strip()
    if not chip or len(chip) > MAX_CHIP_ID or not chip.isprintable():
        raise DataError(f"{where}: chip id {chip[:40]!r} is not usable; expected 1 to {MAX_CHIP_ID} printable characters")
    return chip


def check_geometry(tiles: int, rows: int, cols: int, where: str) -> Geometry:
    """A geometry within the bounds ftdeploy handles (checked before any allocation)."""
    found = f"tiles={tiles} rows={rows} cols={cols}"
    if min(tiles, rows, cols) < 1:
        raise DataError(f"{where}: geometry {found}: expected at least 1 tile of at least 1 x 1 cells")
    if rows > MAX_TILE_SIDE or cols > MAX_TILE_SIDE or tiles > MAX_TILES:
        raise DataError(f"{where}: geometry {found}: expected at most {MAX_TILES} tiles of at most "
                        f"{MAX_TILE_SIDE} x {MAX_TILE_SIDE} cells")  # fmt: skip
    if tiles * rows * cols > MAX_CHIP_CELLS:
        raise DataError(f"{where}: geometry {found} is {tiles * rows * cols:,} cells; expected at most {MAX_CHIP_CELLS:,}")
    return Geometry(tiles, rows, cols)


def check_fits(fmap: FaultMap, placement: Placement) -> None:
    """The map is of a chip the model can be programmed on: tiles of the target's size, and at
    least as many as the model occupies."""
    g = fmap.geometry
    if (g.tile_rows, g.tile_cols) != (placement.tile_rows, placement.tile_cols):
        raise DataError(f"{fmap.geometry_at}: geometry {g.describe()}: tiles of {g.tile_rows} x {g.tile_cols} cells; "
                        f"expected the target's {placement.tile_rows} x {placement.tile_cols}")  # fmt: skip
    if g.tiles < placement.tiles:
        raise DataError(f"{fmap.geometry_at}: geometry {g.describe()}: {g.tiles} tiles; expected at least the "
                        f"{placement.tiles} the model occupies (tiles 0-{placement.tiles - 1})")  # fmt: skip


def _first_repeat(fmap: FaultMap) -> int | None:
    """Index of the first entry (in file order) naming a cell an earlier entry named, or None."""
    g = fmap.geometry
    key = (fmap.tile * g.tile_rows + fmap.row) * g.tile_cols + fmap.col
    order = np.argsort(key, kind="stable")
    repeats = order[1:][key[order[1:]] == key[order[:-1]]]
    return int(repeats.min()) if len(repeats) else None


def _check_repeats(fmap: FaultMap, where) -> None:
    i = _first_repeat(fmap)
    if i is None:
        return
    g = fmap.geometry
    key = (fmap.tile * g.tile_rows + fmap.row) * g.tile_cols + fmap.col
    first = int(np.flatnonzero(key == key[i])[0])
    raise DataError(f"{where(i)}: tile {fmap.tile[i]}, row {fmap.row[i]}, column {fmap.col[i]} listed twice "
                    f"(first {where(first, short=True)}); expected each stuck cell once")  # fmt: skip


# --- reading --------------------------------------------------------------------------------------


def read_fault_map(path: str | Path) -> FaultMap:
    """Read and check one map, ``.csv`` or ``.npz``; DataError (one line) on anything wrong."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a fault map file (.csv or .npz)")
    if not path.is_file():
        raise DataError(f"{path}: fault map not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".npz":
        return _read_npz(path)
    raise DataError(f"{path}: not a fault map; expected a .csv or .npz file")


_HEADER = re.compile(r"([A-Za-z][A-Za-z _-]*):\s*(.*)")
_WHOLE = re.compile(r"[0-9]+")
_GEOMETRY_KEYS = {"tiles": "tiles", "rows": "rows", "cols": "cols", "columns": "cols"}
_EXPECTED_HEADER = "'# chip: <id>' and '# geometry: tiles=N rows=R cols=C'"


def _fields(text: str) -> list[str]:
    """A CSV line's fields, stripped, without the empty ones a spreadsheet pads a row with."""
    fields = next(csv.reader([text])) if '"' in text else text.split(",")
    fields = [f.strip() for f in fields]
    while fields and not fields[-1]:
        fields.pop()
    return fields


class _CsvReader:
    """One pass over a CSV map, line by line (a map may be millions of lines)."""

    def __init__(self, path: Path):
        self.path = path
        self.header: dict[str, tuple[str, int]] = {}
        self.geometry: Geometry | None = None
        self.columns_seen = False
        self.coords = [array.array("q") for _ in range(3)]
        self.states = array.array("B")
        self.lines = array.array("q")

    def fail(self, line: int, what: str):
        raise DataError(f"{self.path}:{line}: {what}")

    def read(self) -> FaultMap:
        digest = hashlib.sha256()
        number = 0
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                digest.update(raw)
                self._line(number, raw)
        if number == 0:
            raise DataError(f"{self.path}: empty file; expected the header {_EXPECTED_HEADER}, then the column line "
                            "'tile,row,column,state' (a chip with no stuck cells is those lines alone)")  # fmt: skip
        if not self.columns_seen:
            self._header_complete(number)
            self.fail(number, "expected the column line 'tile,row,column,state' after the header (a chip with no "
                              "stuck cells has that line and no cells after it)")  # fmt: skip
        chip = self.header["chip"][0]
        fmap = FaultMap(chip, self.geometry, *(np.frombuffer(c, np.int64) if len(c) else np.zeros(0, np.int64) for c in self.coords),
                        np.frombuffer(self.states, np.uint8) if len(self.states) else np.zeros(0, np.uint8),
                        str(self.path), digest.hexdigest(), np.frombuffer(self.lines, np.int64) if len(self.lines) else np.zeros(0, np.int64),
                        f"{self.path}:{self.header['geometry'][1]}")  # fmt: skip
        _check_repeats(fmap, lambda i, short=False: f"on line {fmap.lines[i]}" if short else f"{self.path}:{fmap.lines[i]}")
        return fmap

    def _line(self, number: int, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(number, "not UTF-8 text; expected a CSV file")
        if number == 1:
            text = text.removeprefix("\ufeff")  # spreadsheets save a byte-order mark
        fields = _fields(text)
        if not fields:
            return  # blank, or a row of empty spreadsheet cells
        if fields[0].startswith("#"):
            if not self.columns_seen:
                self._header_line(number, ",".join(fields)[1:].strip())
            return
        if not self.columns_seen:
            self._header_complete(number)
            if [f.lower() for f in fields] != list(CSV_COLUMNS):
                self.fail(number, f"expected the column line 'tile,row,column,state', found {_shown(text)}")
            self.columns_seen = True
            return
        self._cell(number, fields, text)

    def _header_line(self, number: int, comment: str) -> None:
        match = _HEADER.fullmatch(comment)
        key = match.group(1).strip().lower() if match else None
        if key not in ("chip", "geometry", "format"):
            return  # a free comment (tester, date, notes)
        value = match.group(2).strip()
        if key in self.header:
            self.fail(number, f"header '{key}' given twice (first on line {self.header[key][1]}); expected it once")
        self.header[key] = (value, number)
        where = f"{self.path}:{number}"
        if key == "format" and value != FORMAT:
            self.fail(number, f"format {value!r} is not supported; expected {FORMAT!r}")
        if key == "chip":
            self.header[key] = (check_chip_id(value, where), number)
        if key == "geometry":
            self.geometry = check_geometry(*_parse_geometry(value, where), where)

    def _header_complete(self, number: int) -> None:
        missing = [f"'# {k}: ...'" for k in ("chip", "geometry") if k not in self.header]
        if missing:
            self.fail(number, f"missing header {' and '.join(missing)}; expected the header {_EXPECTED_HEADER} "
                              "before the column line")  # fmt: skip

    def _cell(self, number: int, fields: list[str], text: str) -> None:
        if len(fields) != 4:
            self.fail(number, f"expected 4 fields 'tile,row,column,state', found {len(fields)}: {_shown(text)}")
        g = self.geometry
        for coord, name, value, bound in zip(self.coords, ("tile", "row", "column"), fields, (g.tiles, g.tile_rows, g.tile_cols)):
            coord.append(self._whole(number, name, value, bound))
        state = STATES.get(fields[3].lower())
        if state is None:
            self.fail(number, f"state {fields[3][:40]!r} unknown; expected stuck-off or stuck-on")
        self.states.append(state)
        self.lines.append(number)
        if len(self.states) > min(MAX_LISTED, g.cells):
            self.fail(number, f"more cells listed than the geometry {g.describe()} holds or than {MAX_LISTED:,}; "
                              "expected each stuck cell once")  # fmt: skip

    def _whole(self, number: int, name: str, value: str, bound: int) -> int:
        if not _WHOLE.fullmatch(value):
            self.fail(number, f"{name} {value[:40]!r} is not a whole number; expected 0..{bound - 1}")
        if len(value) > 18 or int(value) >= bound:
            self.fail(number, f"{name} {value[:40]} out of range; expected 0..{bound - 1} (geometry {self.geometry.describe()})")
        return int(value)


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _parse_geometry(value: str, where: str) -> tuple[int, int, int]:
    found: dict[str, int] = {}
    for token in re.split(r"[\s,;]+", value.strip()):
        key, _, number = token.partition("=")
        key = _GEOMETRY_KEYS.get(key.strip().lower())
        if key is None or key in found or not _WHOLE.fullmatch(number.strip()) or len(number.strip()) > 18:
            found = {}
            break
        found[key] = int(number)
    if set(found) != {"tiles", "rows", "cols"}:
        raise DataError(f"{where}: geometry {value[:60]!r}: expected 'tiles=N rows=R cols=C' (whole numbers: tiles "
                        "on the chip, rows and columns of one tile)")  # fmt: skip
    return found["tiles"], found["rows"], found["cols"]


def _read_csv(path: Path) -> FaultMap:
    return _CsvReader(path).read()


#: The arrays of the npz form, each ``<name>.npy`` in the zip.
_NPZ_ARRAYS = ("format", "chip", "geometry", "tile", "row", "col", "state")


def _npy_header(zf: zipfile.ZipFile, member: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """An npy member's shape and dtype from its header alone (nothing of the data is read)."""
    try:
        with zf.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"npy version {version}")
            shape, _, dtype = read(fp)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: not a readable .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return tuple(shape), dtype


def _npy_data(zf: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    try:
        with zf.open(member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: not a readable .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


class _NpzReader:
    def __init__(self, path: Path):
        self.path = path

    def at(self, name: str) -> str:
        return f"{self.path}: array {name!r}"

    def read(self) -> FaultMap:
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError):
            raise DataError(f"{self.path}: not a readable .npz (zip) file; expected arrays {', '.join(_NPZ_ARRAYS)}") from None
        with zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
            missing = [n for n in _NPZ_ARRAYS if n not in members]
            if missing:
                raise DataError(f"{self.path}: lacks array {', '.join(missing)}; expected arrays {', '.join(_NPZ_ARRAYS)}")
            headers = {n: _npy_header(zf, members[n], self.at(n)) for n in _NPZ_ARRAYS}
            fmt, chip = (self._text(zf, members[n], n, headers[n]) for n in ("format", "chip"))
            if fmt != FORMAT:
                raise DataError(f"{self.at('format')}: {fmt[:40]!r} is not supported; expected {FORMAT!r}")
            chip = check_chip_id(chip, self.at("chip"))
            geometry = self._geometry(zf, members["geometry"], headers["geometry"])
            coords = self._cells(zf, members, headers, geometry)
        fmap = FaultMap(chip, geometry, *coords, str(self.path), sha256_file(self.path), None, self.at("geometry"))
        _check_repeats(fmap, lambda i, short=False: f"entry {i}" if short else f"{self.path}: entry {i}")
        return fmap

    def _text(self, zf, member: str, name: str, header) -> str:
        shape, dtype = header
        if dtype.kind != "U" or shape != () or dtype.itemsize > 4 * MAX_CHIP_ID:
            raise DataError(f"{self.at(name)}: {dtype}{list(shape)}; expected a string (numpy str scalar, at most {MAX_CHIP_ID} characters)")
        return str(_npy_data(zf, member, self.at(name))[()])

    def _geometry(self, zf, member: str, header) -> Geometry:
        shape, dtype = header
        if dtype.kind not in "iu" or shape != (3,):
            raise DataError(f"{self.at('geometry')}: {dtype}{list(shape)}; expected 3 integers [tiles, rows, cols]")
        tiles, rows, cols = (int(v) for v in _npy_data(zf, member, self.at("geometry")))
        return check_geometry(tiles, rows, cols, self.at("geometry"))

    def _cells(self, zf, members, headers, geometry: Geometry) -> list[np.ndarray]:
        limit = min(MAX_LISTED, geometry.cells)
        lengths = {}
        for name in ("tile", "row", "col", "state"):
            shape, dtype = headers[name]
            if dtype.kind not in "iu" or len(shape) != 1:
                raise DataError(f"{self.at(name)}: {dtype}{list(shape)}; expected a 1-d integer array, one entry per stuck cell")
            lengths[name] = shape[0]
        if len(set(lengths.values())) != 1:
            raise DataError(f"{self.path}: arrays tile, row, col, state have {', '.join(map(str, lengths.values()))} entries; "
                            "expected one entry per stuck cell in each")  # fmt: skip
        if lengths["tile"] > limit:
            raise DataError(f"{self.path}: {lengths['tile']:,} cells listed; expected at most {limit:,} (the geometry "
                            f"{geometry.describe()}, and at most {MAX_LISTED:,})")  # fmt: skip
        out = []
        for name, bound in (("tile", geometry.tiles), ("row", geometry.tile_rows), ("col", geometry.tile_cols)):
            values = _npy_data(zf, members[name], self.at(name))
            bad = np.flatnonzero((values < 0) | (values >= bound))
            if len(bad):
                raise DataError(f"{self.path}: entry {bad[0]}: {name} {values[bad[0]]} out of range; expected 0..{bound - 1} "
                                f"(geometry {geometry.describe()})")  # fmt: skip
            out.append(values.astype(np.int64))
        state = _npy_data(zf, members["state"], self.at("state"))
        bad = np.flatnonzero((state != STUCK_OFF) & (state != STUCK_ON))
        if len(bad):
            raise DataError(f"{self.path}: entry {bad[0]}: state {state[bad[0]]} unknown; expected {STUCK_OFF} (stuck-off) "
                            f"or {STUCK_ON} (stuck-on)")  # fmt: skip
        return out + [state.astype(np.uint8)]


def _read_npz(path: Path) -> FaultMap:
    return _NpzReader(path).read()


# --- writing --------------------------------------------------------------------------------------


def fault_map(chip: str, geometry: Geometry, tile, row, col, state) -> FaultMap:
    """A map built in memory (a simulation's), in the canonical order: by tile, row, column."""
    tile, row, col = (np.asarray(a, dtype=np.int64) for a in (tile, row, col))
    order = np.lexsort((col, row, tile))
    return FaultMap(check_chip_id(chip, "chip"), geometry, tile[order], row[order], col[order], np.asarray(state, np.uint8)[order])


def csv_text(fmap: FaultMap) -> str:
    g = fmap.geometry
    lines = [f"# format: {FORMAT}", f"# chip: {fmap.chip}", f"# geometry: {g.describe()}", ",".join(CSV_COLUMNS)]
    names = np.array([STATE_NAMES.get(s, "?") for s in range(max(STATE_NAMES) + 1)])
    lines += [f"{t},{r},{c},{s}" for t, r, c, s in zip(fmap.tile.tolist(), fmap.row.tolist(), fmap.col.tolist(), names[fmap.state].tolist())]
    return "\n".join(lines) + "\n"


def npz_bytes(fmap: FaultMap) -> bytes:
    """The npz form, byte for byte the same for the same map (fixed member dates, fixed order),
    so a map's SHA-256 names its content."""
    g = fmap.geometry
    arrays = {"format": np.array(FORMAT), "chip": np.array(fmap.chip), "geometry": np.array([g.tiles, g.tile_rows, g.tile_cols], np.int64),
              "tile": fmap.tile.astype(np.int32), "row": fmap.row.astype(np.int32), "col": fmap.col.astype(np.int32),
              "state": fmap.state.astype(np.uint8)}  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, values in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fp:
                np.lib.format.write_array(fp, values, allow_pickle=False)
    return buf.getvalue()


def write_fault_map(fmap: FaultMap, path: str | Path) -> Path:
    """Write ``fmap`` to ``path``, CSV or npz by its suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: expected a .csv or .npz file name for a fault map")
    return write_atomic(path, csv_text(fmap) if suffix == ".csv" else npz_bytes(fmap), DataError)
