"""`helm lint` passes and `helm template` output matches the reviewed golden files."""

import difflib

import helm_python
import pytest

import chartlib

ERROR = 3
WARNING = 2


@pytest.mark.parametrize("case", chartlib.golden_cases())
def test_lint_reports_no_errors_or_warnings(case):
    report = helm_python.lint(chartlib.CHART, chartlib.load_values(case), strict=True,
                              namespace=chartlib.NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not problems and not report["errors"], report


def test_lint_catches_a_broken_template(tmp_path):
    # Guards the test above: a chart with a template error must not lint clean.
    with chartlib.load_chart() as chart:
        broken = chart.save_dir(tmp_path)
    template = tmp_path / "grokcast" / "templates" / "service.yaml"
    template.write_text(template.read_text() + "\n{{ .Values.service.port | nonexistentfunc }}\n")
    report = helm_python.lint(broken)
    assert report["errors"] or any(m["severity"] == ERROR for m in report["messages"])


@pytest.mark.parametrize("case", chartlib.golden_cases())
def test_render_matches_golden(case):
    golden = chartlib.GOLDEN / f"{case}.yaml"
    assert golden.exists(), f"{golden} is missing: run python3 tests/chart/regenerate.py"
    expected = golden.read_text(encoding="utf-8")
    actual = chartlib.golden_render(case)
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            fromfile=f"golden/{case}.yaml", tofile="rendered"))
        pytest.fail("chart render differs from the golden file; if intended, run "
                    f"python3 tests/chart/regenerate.py and review the diff:\n{diff}")


def test_every_values_file_has_a_golden_file_and_back():
    goldens = sorted(p.stem for p in chartlib.GOLDEN.glob("*.yaml"))
    assert goldens == chartlib.golden_cases()
