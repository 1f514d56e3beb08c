"""docs/reference.md is what ftdeploy.reference renders from the pydantic models, every target and
profile field is documented there, and the walk handles the shapes a field can take
(nested sections, lists of them, discriminated unions of kinds)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, Field

from ftdeploy.profiles import Profile, Target
from ftdeploy.reference import REFERENCE_PATH, REGENERATE, all_fields, render_model, render_reference

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_reference_is_what_the_models_render():
    page = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert page == render_reference(), f"{REFERENCE_PATH} is out of date; regenerate it with: {REGENERATE}"


@pytest.mark.parametrize("model", [Target, Profile], ids=["target", "profile"])
def test_every_field_has_a_description(model):
    """An undocumented field would leave an empty cell on the page: every field, in every
    section and every kind of a union, says what it is."""
    fields = list(all_fields(model))
    missing = [path for path, field in fields if not (field.description or "").strip()]
    assert len(fields) > 10 and not missing, f"fields without a description in ftdeploy/profiles.py: {missing}"


@pytest.mark.parametrize("model", [Target, Profile], ids=["target", "profile"])
def test_every_field_has_a_row_in_its_section(model):
    """Each field is a row of the table under its section's heading (the table of the section
    that holds it, not merely a mention somewhere on the page)."""
    page = render_reference()
    heading = f"## {model.__name__}\n"
    start = page.index(heading)
    end = page.find("\n## ", start + len(heading))
    part = page[start : end if end > 0 else None]
    for path, _ in all_fields(model):
        section, _, name = path.rpartition(".")
        base = re.sub(r"\[[^\]]*\]$", "", section)  # acceptance[] and faults[stuck-at] head their tables as `...[]`
        after = part.index(f"### `{base}") if section else 0
        assert f"\n| `{name}` |" in part[after:], path


def test_target_values_and_enum_choices_are_listed():
    page = render_reference()
    for mapping in ("differential", "differential-inverted", "offset", "bitsliced"):
        assert f"- `{mapping}`: " in page
    assert "| `batchnorm` | `fold` \\| `periphery` | `fold` |" in page
    assert "| `bits_per_cell` | integer (1 ≤ x ≤ 8) | required |" in page
    assert "| `clean_steps` | number (0 ≤ x < 1) | `0` |" in page


# A profile of the shape fault kinds take: a list of sections, each one of several models told
# apart by a discriminator field.


class _StuckAt(BaseModel):
    """Cells stuck at the lowest or highest level."""

    kind: Literal["stuck-at"] = Field(description="This kind.")
    p_sa: float = Field(ge=0, le=1, description="Total stuck-at probability per cell.")
    split: tuple[float, float] = Field((1.75, 9.04), description="Stuck-off : stuck-on.")


class _Drift(BaseModel):
    """Conductance drift over time."""

    kind: Literal["drift"] = Field(description="This kind.")
    nu_mean: float = Field(0.05, description="Mean drift exponent.")
    at: str = Field("1 day", description="Time after programming.")


_Kind = Annotated[Union[_StuckAt, _Drift], Field(discriminator="kind")]


class _Toy(BaseModel):
    """A toy deployment."""

    name: str = Field(description="Its name.")
    faults: list[_Kind] = Field(description="Non-idealities, composed on one chip.")
    worst: _Kind | None = Field(None, description="One kind, optional.")


def test_a_discriminated_union_gets_one_table_per_kind():
    page = render_model(_Toy, "Toy")
    assert "| `faults` | list of sections, each one of `stuck-at`, `drift` (below), chosen by its `kind` | required |" in page
    assert "| `worst` | section, one of `stuck-at`, `drift` (below), chosen by its `kind` | none |" in page
    for path in ("faults[]", "worst"):
        stuck = page.index(f"### `{path}`, kind `stuck-at`\n")
        drift = page.index(f"### `{path}`, kind `drift`\n")
        assert stuck < drift
        assert "Cells stuck at the lowest or highest level." in page[stuck:drift]
        assert "| `p_sa` | number (0 ≤ x ≤ 1) | required | Total stuck-at probability per cell. |" in page[stuck:drift]
        drift_table = page[drift:].split("<a id=")[0]
        assert "| `at` | text | `1 day` | Time after programming. |" in drift_table
        assert "| `p_sa` |" not in drift_table
    paths = [p for p, _ in all_fields(_Toy)]
    assert "faults[stuck-at].split" in paths and "faults[drift].nu_mean" in paths and "worst[drift].at" in paths
