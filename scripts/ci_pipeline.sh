#!/usr/bin/env bash
# The pipeline as CI runs it. Two modes, chosen by whether a default DVC remote is configured:
#   remote: restore unchanged stages from the remote's cache and run-cache (`dvc repro --pull`), run the rest,
#           and push the new results (unless CI_PUSH=0: a fork's pull request is read-only);
#   local:  no remote (a fresh fork): reproduce with the local cache alone (in GitHub Actions, actions/cache).
# Either way it writes the job summary ($CI_SUMMARY): each stage restored or executed and why, then
# `dvc metrics diff` against $BASE_REV in a stable order. CI_STRICT_CACHE=1 fails the job when a stage ran
# only because its outputs were missing from the cache or remote.
# The workflow (.github/workflows/pipeline.yml) and the tests (tests/test_remote.py) both run this script.
set -euo pipefail

base_rev="${BASE_REV:-main}"
summary="${CI_SUMMARY:-ci_summary.md}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -f dvc.lock ] && cp dvc.lock "$work/lock_before.yaml"

remote="$(dvc remote default 2>/dev/null)" || remote=""  # exit 1 and a message when there is none
if [ -n "$remote" ]; then
  mode="remote '$remote'"
  dvc repro --pull 2>&1 | tee "$work/repro.log"
else
  mode="local cache only: no DVC remote configured"
  echo "notice: no default DVC remote: reproducing with the local cache alone; nothing will be pushed"
  dvc repro 2>&1 | tee "$work/repro.log"
fi

strict=()
[ "${CI_STRICT_CACHE:-0}" = "1" ] && strict=(--strict)
status=0
python scripts/ci_report.py --before "$work/lock_before.yaml" --after dvc.lock --log "$work/repro.log" \
  --base-rev "$base_rev" --mode "$mode" "${strict[@]}" > "$summary" || status=$?

if [ -n "$remote" ] && [ "${CI_PUSH:-1}" != "0" ]; then
  dvc push --run-cache
elif [ -n "$remote" ]; then
  echo "notice: CI_PUSH=0 (read-only, e.g. a pull request from a fork): results not pushed" | tee -a "$summary"
fi
cat "$summary"
exit "$status"
