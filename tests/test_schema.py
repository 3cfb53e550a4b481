"""The TOML schema is the one source of keys and defaults: the checkers accept what it
declares, fill in what it says, and the README's table is rendered from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmix import schema
from mlmix.errors import ConfigurationError
from mlmix.fitting.pipeline import parse_config
from mlmix.runconfig import parse_run_config
from test_run import si_config, w_screw_config

ROOT = Path(__file__).resolve().parents[1]
LITERAL = (schema.REQUIRED, schema.DERIVED, None)


def _applies(key: schema.Key, variant: str | None) -> bool:
    return not key.only or variant in key.only


def _assert_defaults(section: schema.Section, given: dict, parsed: dict, variant=None) -> int:
    """Every key with a literal default that was not given is filled in with it."""
    checked = 0
    for key in section.keys:
        if key.default in LITERAL or key.type == "table" or key.name in given \
                or not _applies(key, variant):
            continue
        assert parsed[key.name] == key.default, (section.name, key.name)
        checked += 1
    return checked


def test_readme_table_is_the_rendered_summary():
    text = (ROOT / "README.md").read_text()
    begin = text.index(schema.README_BEGIN) + len(schema.README_BEGIN) + 1
    end = text.index(schema.README_END)
    assert text[begin:end] == schema.summary_markdown(schema.RUN, schema.POTENTIAL), (
        "README's config table differs from mlmix.schema: paste "
        "schema.summary_markdown(schema.RUN, schema.POTENTIAL) between the markers")


@pytest.mark.parametrize("kind", ["md", "relax", "neb"])
def test_run_checker_fills_in_the_declared_defaults(kind):
    cfg = si_config(kind=kind)
    if kind != "md":
        for key in ("ensemble", "temperature_K", "steps", "seed"):
            del cfg["task"][key]
        cfg["regions"]["nevery"] = 0
    if kind == "neb":
        cfg["task"]["hop"] = 0
    cfg["output"] = {}
    parsed = parse_run_config(cfg)
    checked = sum([
        _assert_defaults(schema.RUN.section("task"), si_config(kind=kind)["task"], parsed.task,
                         kind),
        _assert_defaults(schema.RUN.section("regions"), cfg["regions"], parsed.regions),
        _assert_defaults(schema.RUN.section("output"), {}, parsed.output),
        _assert_defaults(schema.RUN.section("mixing"), {}, parsed.mixing),
        _assert_defaults(schema.RUN.section("engine"), {}, parsed.engine),
    ])
    assert checked >= 12


def test_run_checker_fills_in_structure_seed_and_hysteresis_defaults():
    cfg = w_screw_config()
    del cfg["structure"]["n_burgers"], cfg["structure"]["fix_width"]
    del cfg["regions"]["seeds"]["window"]
    cfg["regions"]["hysteresis"] = {}
    parsed = parse_run_config(cfg)
    assert _assert_defaults(schema.RUN.section("structure"), cfg["structure"],
                            parsed.structure, "dislocation") == 2
    seeds = schema.RUN.section("regions.seeds")
    assert _assert_defaults(seeds, cfg["regions"]["seeds"], parsed.seeds, "classifier") == 2
    assert _assert_defaults(schema.RUN.section("regions.hysteresis"), {},
                            parsed.hysteresis) == 2


def test_fit_checker_uses_the_declared_defaults():
    cfg = {"expensive": {"backend": "lammps", "style": "sw", "file": "Si.sw",
                         "species": ["Si"]},
           "structure": {"element": "Si", "crystal": "diamond", "a": 5.43},
           "model": {"family": "snap"}, "output": {"directory": "out"}}
    parsed = parse_config(cfg)
    checked = 0
    for name in ("structure", "hard", "soft", "fit", "report", "output"):
        for key in schema.FIT.section(name).keys:
            if key.default in LITERAL or key.type == "table" or key.name in cfg.get(name, {}):
                continue
            attribute = {"seed": "seed", "directory": "output"}.get(key.name, key.name)
            assert getattr(parsed, attribute) == key.default, (name, key.name)
            checked += 1
    assert checked >= 17


def _all_keys(section: schema.Section, variant: str | None) -> dict:
    return {k.name: 1 for k in section.keys if _applies(k, variant)}


@pytest.mark.parametrize("section, variant", [
    ("regions", None), ("mixing", None), ("output", None), ("engine", None),
    ("task", "md"), ("task", "relax"), ("task", "neb"),
    ("regions.seeds", "classifier"), ("regions.seeds", "lammps_compute"),
])
def test_every_declared_key_is_accepted_and_no_other(section, variant):
    """Each section with all its declared keys (values may be wrong): no unknown-key
    complaint; one undeclared key: named, with the declared ones listed."""
    sec = schema.RUN.section(section)
    cfg = si_config()
    table = _all_keys(sec, variant)
    if sec.selector:
        table[sec.selector] = variant
    where = cfg
    *parents, last = section.split(".")
    for name in parents:
        where = where[name]
    where[last] = table
    try:
        parse_run_config(cfg)
        message = ""
    except ConfigurationError as exc:  # wrong values are expected, unknown keys are not
        message = str(exc)
    assert "unknown key" not in message, message
    table["no_such_key"] = 1
    with pytest.raises(ConfigurationError, match=rf"{section}\.no_such_key: unknown key"):
        parse_run_config(cfg)


def test_reference_lists_every_section_with_types_and_defaults():
    text = schema.reference_markdown(schema.RUN)
    for sec in schema.RUN.sections:
        if sec.name:
            assert f"### `[{sec.name}]`" in text
    assert "| `mask_cheap` | bool | false |" in text
    assert "| `timestep_fs` | md | float | 1 | fs |" in text


def test_fit_checker_refuses_private_model_arguments_and_bad_report_flags_at_once():
    cfg = {"expensive": {"backend": "lammps", "style": "sw", "file": "Si.sw",
                         "species": ["Si"]},
           "structure": {"element": "Si", "crystal": "diamond", "a": 5.43},
           "model": {"family": "uf3", "_knots2": {}},
           "report": {"vacancy": "yes"}, "output": {"directory": "out", "stem": ""}}
    with pytest.raises(ConfigurationError) as caught:
        parse_config(cfg)
    message = str(caught.value)
    assert "model._knots2: unknown key" in message
    assert "report.vacancy: must be true or false, got 'yes'" in message
    assert "output.stem: must be a file name stem" in message
