"""Rewrites what the chart tests compare against, after an intended change:

    python3 tests/chart/regenerate.py

1. copies the generated CRDs (crds/yaml/) into charts/grokcast/crds/ and config/crd/bases/,
   and the Prometheus rules and Grafana dashboards (config/prometheus/, config/grafana/) into
   charts/grokcast/files/;
2. rewrites config/rbac/ and config/operator/ from the chart's default render (the comment
   block at the top of each file is kept), so `kubectl apply -k config/default` installs what
   the chart installs;
3. renders the chart with Helm's engine for each values file in tests/chart/values/ and writes
   tests/chart/golden/<name>.yaml.

Review the diff before committing it: the golden files are what a user's `helm template` shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402


def main() -> int:
    for line in chartlib.sync_copies() + chartlib.sync_config():
        print(line)
    chartlib.GOLDEN.mkdir(parents=True, exist_ok=True)
    for case in chartlib.golden_cases():
        path = chartlib.GOLDEN / f"{case}.yaml"
        text = chartlib.golden_render(case)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(chartlib.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
