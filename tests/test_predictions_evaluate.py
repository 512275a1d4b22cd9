"""`mailer predict evaluate`: the hold-out comparison of the paper, by calibration frequency, and its chart."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from collections import defaultdict

import numpy as np
import pytest
from click.testing import CliRunner

from mailer.cli import main
from mailer.predictions import bgnbd
from mailer.predictions.evaluate import chart_svg, evaluate
from tests.test_predictions_product import CDNOW, _cdnow_csv, _env

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def cdnow_imported(settings, tmp_path):
    """The CDNOW sample imported with `mailer orders import`."""
    res = CliRunner().invoke(main, ["orders", "import", str(_cdnow_csv(tmp_path))], env=_env(settings))
    assert res.exit_code == 0, res.output
    return settings


def _plain_holdout(calibration_end: str) -> tuple[dict[int, int], dict[int, int]]:
    """From the raw CDNOW file, in plain Python: calibration x and hold-out transactions per customer."""
    days = defaultdict(set)
    for line in CDNOW.read_text().splitlines():
        if line.strip():
            _, cid, day, _, _ = line.split()
            days[int(cid)].add(day)
    cal = calibration_end.replace("-", "")
    x = {c: len([d for d in ds if d <= cal]) - 1 for c, ds in days.items()}
    hold = {c: len([d for d in ds if d > cal]) for c, ds in days.items()}
    return x, hold


def test_cdnow_holdout_by_frequency_group_and_chart(cdnow_imported, tmp_path):
    # Given the CDNOW sample imported with `mailer orders import`
    chart = tmp_path / "evaluation.svg"
    # When the paper's hold-out evaluation runs (calibration to 1997-09-30, the rest of the data after it)
    res = CliRunner().invoke(main, ["predict", "evaluate", "--calibration-end", "1997-09-30", "--chart", str(chart),
                                    "--json"], env=_env(cdnow_imported))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # Then it fits the paper's calibration model and measures the 39-week hold-out
    assert out["holdout_end"] == "1998-06-30" and out["holdout_weeks"] == pytest.approx(39.0, abs=0.01)
    assert out["customers"] == 2357 and out["bgnbd"]["r"] == pytest.approx(0.243, rel=0.01)
    # And the actual hold-out transactions per frequency group are those of the raw file
    x, hold = _plain_holdout("1997-09-30")
    assert out["actual_transactions"] == sum(hold.values()) == 1882
    for group in out["groups"]:
        members = [c for c in x if (x[c] >= 7 if group["group"] == "7+" else x[c] == int(group["group"]))]
        assert group["customers"] == len(members)
        assert group["actual"] == pytest.approx(sum(hold[c] for c in members) / len(members), abs=1e-4)
    # And the predicted are the model's eq. 10 for each customer; the errors are predicted minus actual
    params = tuple(out["bgnbd"][k] for k in ("r", "alpha", "a", "b"))
    first = {}
    for line in CDNOW.read_text().splitlines():
        if line.strip():
            _, cid, day, _, _ = line.split()
            first[int(cid)] = min(first.get(int(cid), day), day)
    # Customers with x = 0 differ only in T (weeks from their first order to the calibration end)
    zero = [c for c in x if x[c] == 0]
    T = np.array([(dt.date(1997, 9, 30) - dt.date.fromisoformat(f"{first[c][:4]}-{first[c][4:6]}-{first[c][6:]}")).days
                  / 7 for c in zero])
    expected = bgnbd.expected_transactions(params, 39.0, np.zeros(len(zero)), np.zeros(len(zero)), T)
    g0 = out["groups"][0]
    assert g0["group"] == "0" and g0["customers"] == len(zero)
    assert g0["predicted"] == pytest.approx(float(np.mean(expected)), abs=2e-4)
    assert all(g["error"] == pytest.approx(g["predicted"] - g["actual"], abs=2e-4) for g in out["groups"])
    # As in the paper, the model tracks the hold-out: expectations rise with x, the total within 15%
    predicted = [g["predicted"] for g in out["groups"]]
    assert predicted == sorted(predicted)
    assert abs(out["total_error_percent"]) < 15
    # And the chart is an SVG a person can open: one actual and one predicted bar per group, no script
    root = ET.fromstring(chart.read_text())
    assert root.tag == f"{SVG}svg" and list(root.iter(f"{SVG}script")) == []
    assert len([r for r in root.iter(f"{SVG}rect") if r.get("class") == "actual"]) == 8
    assert len([r for r in root.iter(f"{SVG}rect") if r.get("class") == "predicted"]) == 8
    assert "<script" not in chart.read_text() and "1882" in chart.read_text()


def test_the_text_report_lists_every_group_and_the_total(cdnow_imported, tmp_path):
    res = CliRunner().invoke(main, ["predict", "evaluate", "--calibration-end", "1997-09-30",
                                    "--chart", str(tmp_path / "c.svg")], env=_env(cdnow_imported))
    assert res.exit_code == 0, res.output
    for label in ("7+", "total", "actual 1882", "chart:"):
        assert label in res.output


def test_an_empty_holdout_is_refused_naming_the_option(cdnow_imported, tmp_path):
    res = CliRunner().invoke(main, ["predict", "evaluate", "--calibration-end", "1998-06-30",
                                    "--chart", str(tmp_path / "c.svg")], env=_env(cdnow_imported))
    assert res.exit_code == 2
    assert "hold-out period is empty" in res.output and not (tmp_path / "c.svg").exists()


def _simulate(n: int, seed: int, params=(0.8, 6.0, 0.7, 3.5), weeks: int = 104):
    """Orders from a known BG/NBD process: first orders in the first 12 weeks, then Poisson(lambda) while active."""
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    ids, days = [], []
    start = dt.date(2024, 1, 1)
    for cid in range(n):
        lam, p = rng.gamma(r, 1 / alpha), rng.beta(a, b)
        t = rng.uniform(0, 12)
        ids.append(cid)
        days.append(t)
        while True:
            t += rng.exponential(1 / lam)
            if t >= weeks:
                break
            ids.append(cid)
            days.append(t)
            if rng.random() < p:
                break
    day = np.array([np.datetime64(start) + int(d * 7) for d in days], dtype="datetime64[D]")
    return np.array(ids), day, np.full(len(ids), 20.0)


def test_on_a_known_process_the_holdout_prediction_matches_what_happened():
    # Given 6,000 customers simulated from a known BG/NBD process over 104 weeks
    ids, days, amounts = _simulate(6000, 7)
    # When the first 52 weeks calibrate and the last 52 are held out
    ev = evaluate(ids, days, amounts, calibration_end=dt.date(2024, 12, 29), holdout_end=dt.date(2025, 12, 28))
    # Then the predicted hold-out total is within 5% of the simulated one, and so is every well-filled group
    assert abs(ev.total_error_percent) < 5, ev.as_dict()
    for g in ev.groups:
        if g.customers >= 300:
            assert abs(g.error) <= 0.1 * g.actual + 0.05, g
    assert chart_svg(ev).startswith("<svg")
