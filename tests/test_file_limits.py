"""Segment and automation files are bounded and never crash: size, nesting, YAML aliases, NaN/inf.

A bad file is refused with the documented error (SegmentError / ConfigurationError)
naming the file; ``segments list`` and ``automations list`` mark it invalid and still
list the others.  Bombs are refused before they expand: the tests count the work
(YAML nodes composed, peak memory), never the time.
"""

from __future__ import annotations

import shutil
import tracemalloc

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mailer import segments
from mailer.automations import parse_rule
from mailer.cli import main
from mailer.errors import ConfigurationError, SegmentError
from mailer.rendering import Renderer
from mailer.segments.files import (
    MAX_CONDITION_DEPTH,
    MAX_CONDITIONS,
    MAX_FILE_NESTING_DEPTH,
    MAX_SEGMENT_FILE_BYTES,
    BoundedYAMLLoader,
)
from mailer.settings import PROJECT_ROOT
from tests.conftest import make_settings

#: Peak memory a refused bomb may cost, bytes ("a few MB").
BOMB_PEAK_BYTES = 5 * 1024 * 1024

LAUGHS = "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10))
BILLION_LAUGHS = 'purpose: newsletter\nl0: &l0 "lol"\n' + LAUGHS + "where: {tags: {any: *l9}}\n"
P = 'purpose = "newsletter"\n'


def _segdir(tmp_path, files: dict[str, str | bytes]):
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return make_settings(segments_dir=tmp_path)


BAD_SEGMENTS = [
    ("deep.toml", P + "where = " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("dotted.toml", P + "where." + ".".join(["not"] * 200) + '.locale = "en"\n', "nested deeper than"),
    ("nested.toml", P + "[where]\n" + "not = { " * (MAX_CONDITION_DEPTH + 1) + 'locale = "en"'
     + " }" * (MAX_CONDITION_DEPTH + 1) + "\n", f"nest deeper than {MAX_CONDITION_DEPTH}"),
    ("many.toml", P + "[where]\nany = [" + ", ".join(['{ locale = "en" }'] * (MAX_CONDITIONS + 1)) + "]\n",
     f"more than {MAX_CONDITIONS} conditions"),
    ("nan.toml", P + "[where]\ntotal_spent = { gt = nan }\n", "nan is not a finite number"),
    ("inf.toml", P + "[where]\ntotal_spent = { lt = -inf }\n", "-inf is not a finite number"),
    ("e400.toml", P + "[where]\ntotal_spent = { gt = 1e400 }\n", "inf is not a finite number"),
    ("money.toml", P + "[where]\ntotal_spent = { gt = 1e13 }\n", "beyond what the total_spent column holds"),
    ("orders.toml", P + "[where]\norders_count = { gt = 9223372036854775808 }\n",
     "beyond what the orders_count column holds"),
    ("days.toml", P + "[where]\ncreated_at = { within_days = 99999999999 }\n", "whole number of days"),
    ("laughs.yaml", BILLION_LAUGHS, "anchors and aliases"),
    ("anchor.yaml", "purpose: &p newsletter\n", "anchors and aliases"),
    ("deep.yaml", "purpose: newsletter\nwhere: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("nan.yaml", "purpose: newsletter\nwhere: {total_spent: {gt: .nan}}\n", "not a finite number"),
    ("latin1.toml", P.encode() + b"description = 'caf\xe9'\n", "line 2: byte 0xe9 is not valid UTF-8"),
    ("huge.toml", P + "#" * MAX_SEGMENT_FILE_BYTES + "\n", f"larger than {MAX_SEGMENT_FILE_BYTES} bytes"),
]


@pytest.mark.parametrize("name,text,reason", BAD_SEGMENTS, ids=[b[0] for b in BAD_SEGMENTS])
def test_a_bad_segment_file_is_refused_with_a_reason_naming_the_file(tmp_path, name, text, reason):
    # Given a segment file that breaks a limit
    settings = _segdir(tmp_path, {name: text})
    # When loaded, within a bounded amount of memory
    tracemalloc.start()
    try:
        with pytest.raises(SegmentError) as err:
            segments.load(settings, name.partition(".")[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then a SegmentError names the file and the reason, and the refusal cost little memory
    assert str(tmp_path / name) in str(err.value)
    assert reason in str(err.value), str(err.value)
    assert peak < BOMB_PEAK_BYTES


def test_billion_laughs_is_refused_before_any_alias_is_expanded():
    # Given the classic YAML bomb (10**9 "lol"s in under 1 KB)
    assert len(BILLION_LAUGHS) < 1024
    loader = BoundedYAMLLoader(BILLION_LAUGHS)
    # When composed by the segment loader
    try:
        with pytest.raises(yaml.YAMLError, match="anchors and aliases"):
            loader.get_single_data()
        # Then it stopped at the first anchor, a handful of nodes in
        assert loader.nodes_composed <= 5
    finally:
        loader.dispose()


def test_condition_dicts_of_any_depth_are_refused_without_recursion_errors():
    # Given a condition nested far deeper than Python's recursion limit (built in code, e.g. by an API)
    cond: dict = {"locale": "en"}
    for _ in range(5000):
        cond = {"not": cond}
    # When validated, compiled or evaluated, Then each is a SegmentError
    for call in (lambda: segments.validate_condition(cond), lambda: segments.compile_condition(cond),
                 lambda: segments.evaluate(cond, {"locale": "en"})):
        with pytest.raises(SegmentError, match=f"nested deeper than {MAX_FILE_NESTING_DEPTH}"):
            call()


def test_segments_list_marks_bad_files_invalid_and_lists_the_rest(tmp_path):
    # Given a good segment beside several bad ones
    _segdir(tmp_path, {"good.toml": P + '[where]\nlocale = "en"\n', "deep.toml": BAD_SEGMENTS[0][1],
                       "laughs.yaml": BILLION_LAUGHS, "latin1.toml": BAD_SEGMENTS[14][1],
                       "Bad Name.toml": P})
    env = {"MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAILER_SEGMENTS_DIR": str(tmp_path),
           "COLUMNS": "300"}
    # When listed
    res = CliRunner().invoke(main, ["segments", "list"], env=env)
    # Then it exits 1 (not a traceback), names each bad file with its reason, and lists the good one
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "invalid: " + str(tmp_path / "deep.toml") + ": nested deeper than" in res.output
    assert str(tmp_path / "laughs.yaml") in res.output and "anchors and aliases" in res.output
    assert "latin1.toml: line 2: byte 0xe9" in res.output
    assert "Bad Name.toml" in res.output
    assert "good" in res.output and "newsletter" in res.output


def _nested_toml(draw_depth: int, kinds: list[str]) -> str:
    opens = "".join("[" if k == "a" else "{ x = " for k in kinds[:draw_depth])
    closes = "".join("]" if k == "a" else " }" for k in reversed(kinds[:draw_depth]))
    return P + f"where = {opens}1{closes}\n"


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.text(max_size=400),
    st.binary(max_size=400).map(lambda b: b.decode("latin-1")),
    st.builds(_nested_toml, st.integers(0, 3000), st.lists(st.sampled_from("at"), min_size=3000, max_size=3000)),
    st.recursive(st.sampled_from(['"en"', "1", "nan", "inf", "-0.5", "1e400", "true", "[]", "{}"]),
                 lambda inner: st.one_of(
                     st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     st.dictionaries(st.sampled_from(["all", "any", "not", "locale", "tags", "gt", "eq", "any",
                                                      "total_spent", "orders_count", "within_days"]),
                                     inner, max_size=3).map(
                         lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }")),
                 max_leaves=40).map(lambda c: P + f"where = {c}\n")),
    suffix=st.sampled_from([".toml", ".yaml"]))
def test_arbitrary_segment_files_load_or_are_refused_with_segment_error(tmp_path, body, suffix):
    # Given any text as a segment file (random text, bytes, random TOML nesting and conditions)
    (tmp_path / f"any{suffix}").write_text(body, encoding="utf-8", errors="surrogatepass")
    settings = make_settings(segments_dir=tmp_path)
    # When loaded, Then it is a Segment or a SegmentError naming the file; nothing else escapes
    try:
        seg = segments.load(settings, "any")
    except SegmentError as exc:
        assert str(tmp_path / f"any{suffix}") in str(exc)
    else:
        segments.describe(seg.conditions)
    finally:
        (tmp_path / f"any{suffix}").unlink()


# -- automation files ------------------------------------------------------------------------------
R = 'event = "order_delayed"\nkind = "order_delayed"\n'
BAD_RULES = [
    ("deep", R + "data = { x = " + "[" * 5000 + "]" * 5000 + " }\n", "nested deeper than"),
    ("dotted", R + "data." + ".".join(["x"] * 200) + " = 1\n", "nested deeper than"),
    ("nan", 'event = "product_restocked"\nkind = "back_in_stock"\naudience = "restock_requests"\n'
     "[waves]\ninterval = \"1h\"\nper_unit = nan\n", "waves.per_unit: nan is not a finite number"),
    ("inf-if", R + "[event_if]\nnew_eta = { gt = inf }\n", "not a finite number"),
    ("long-delay", R + 'delay = "99999999999999999d"\n', "is not a duration"),
    ("delay-years", R + 'delay = "99999d"\n', "is longer than 3660 days"),
    ("latin1", R + "description = 'caf\xe9'\n", "line 3: byte 0xe9 is not valid UTF-8"),
    ("huge", R + "#" * 70_000 + "\n", "larger than"),
    ("customer-nan", 'event = "customer_updated"\nkind = "order_delayed"\n'
     "customer_if = { total_spent = { gt = nan } }\n", "not a finite number"),
]


@pytest.mark.parametrize("name,text,reason", BAD_RULES, ids=[b[0] for b in BAD_RULES])
def test_a_bad_rule_file_is_refused_with_a_reason_naming_the_file(tmp_path, name, text, reason):
    # Given a rule file that breaks a limit
    path = tmp_path / f"{name}.toml"
    path.write_bytes(text.encode("latin-1") if name == "latin1" else text.encode())
    settings = make_settings()
    # When parsed, Then a ConfigurationError names the file and the reason
    with pytest.raises(ConfigurationError) as err:
        parse_rule(path, settings, Renderer(settings))
    assert str(path) in str(err.value) and reason in str(err.value), str(err.value)


def test_automations_list_marks_a_bad_file_invalid_and_lists_the_rest(tmp_path):
    # Given the shipped rules plus a nesting bomb and a non-UTF-8 file
    rules = tmp_path / "automations"
    shutil.copytree(PROJECT_ROOT / "automations", rules)
    (rules / "bomb.toml").write_text(BAD_RULES[0][1], encoding="utf-8")
    (rules / "latin.toml").write_bytes(b"event = 'x'\ndescription = '\xe9'\n")
    env = {"MAILER_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "MAILER_AUTOMATIONS_DIR": str(rules)}
    # When listed
    res = CliRunner().invoke(main, ["automations", "list"], env=env)
    # Then it exits 1 without a traceback, names both bad files, and still lists the good rules
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert f"invalid: {rules / 'bomb.toml'}: nested deeper than" in res.output
    assert f"invalid: {rules / 'latin.toml'}: line 2: byte 0xe9" in res.output
    for name in ("order_delayed", "abandoned_cart", "back_in_stock"):
        assert name in res.output
