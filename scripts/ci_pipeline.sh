#!/usr/bin/env bash
# The pipeline as CI runs it, against the default DVC remote: restore what is unchanged, run the rest, push
# the new results, and write `dvc metrics diff` against the base revision as markdown.
#   BASE_REV   revision to compare with (default: main)
#   DIFF_MD    where to write the markdown (default: metrics_diff.md)
# The workflow in .github/workflows/pipeline.yml and the tests in tests/test_remote.py both run this script.
set -euo pipefail

base_rev="${BASE_REV:-main}"
diff_md="${DIFF_MD:-metrics_diff.md}"

# --pull: fetch the run-cache and any missing outputs from the remote first, so a stage whose code, params
# and data are unchanged is checked out from the cache ("Stage '...' is cached - skipping run") instead
# of being executed.
dvc repro --pull
dvc push --run-cache

{
  echo "## Metrics: ${base_rev} -> this run"
  echo
  dvc metrics diff "${base_rev}" --md --precision 4 || echo "(no metrics at ${base_rev} to compare with)"
} > "${diff_md}"
cat "${diff_md}"
