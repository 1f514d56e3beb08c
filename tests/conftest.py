"""Shared fixtures: two CPU threads (the CI box has two cores), tiny targets, a tiny net."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch
import torch.nn as nn

from ftdeploy.profiles import Target, builtin_targets, load_profile, load_target

torch.set_num_threads(2)

#: The shipped targets, loaded once; parametrize over ``SHIPPED_TARGET_NAMES``.
SHIPPED_TARGET_NAMES = [p.stem for p in builtin_targets()]


def make_target(mapping: str = "differential", bits_per_cell: int = 7, weight_bits: int = 8, scale: str = "layer",
                tile_rows: int = 128, tile_cols: int = 128, **kw) -> Target:  # fmt: skip
    """A valid Target built in code (validated exactly like a YAML file)."""
    return Target(
        name=kw.pop("name", f"t-{mapping}-{bits_per_cell}-{weight_bits}-{scale}"),
        g_off_uS=kw.pop("g_off_uS", 1.0),
        g_on_uS=kw.pop("g_on_uS", 100.0),
        bits_per_cell=bits_per_cell,
        weight_bits=weight_bits,
        mapping=mapping,
        scale=scale,
        tile_rows=tile_rows,
        tile_cols=tile_cols,
        **kw,
    )


def demo_profile_with(folder, name: str = "demo-variant.yaml", **sections) -> str:
    """The shipped demo profile written to ``folder/name`` with ``sections`` (``training={...}``,
    ``signoff={...}``) updated key by key; its target still resolves to the shipped one."""
    import yaml

    demo = load_profile("demo")
    data = yaml.safe_load(demo.profile_path.read_text())
    data["target"] = str(demo.target_path)
    for section, changes in sections.items():
        data[section].update(changes)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def target_factory():
    """``target_factory(mapping=..., bits_per_cell=..., weight_bits=..., scale=...)``."""
    return make_target


@pytest.fixture(params=SHIPPED_TARGET_NAMES)
def shipped_target(request) -> Target:
    return load_target(request.param)[0]


class TinyNet(nn.Module):
    """Conv + Linear without BatchNorm: folding leaves the weights bit-identical, so a
    DeployedNetwork's layers can be compared with faulty_weight on the original weights."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=True)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def run_main(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """``ftdeploy ARGV`` through main(), as the console script runs it: (exit status, stdout,
    stderr); returning normally is exit status 0."""
    import sys

    from ftdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["ftdeploy", *map(str, argv)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


class Page(HTMLParser):
    """Reads a page back: its tags (with attributes), its text, its tables (cell texts by row),
    and whether every opened element was closed (void elements and the SVG's self-closing ones
    aside)."""

    VOID = frozenset({"meta", "br", "img", "link", "input", "hr", "col", "source", "wbr", "area", "base", "embed", "track"})

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.mismatched: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.mismatched.append(tag)
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())

    def table(self, first_header: str) -> list[list[str]]:
        """The rows (header row first) of the table whose first header cell is ``first_header``."""
        return next(t for t in self.tables if t and t[0] and t[0][0] == first_header)
