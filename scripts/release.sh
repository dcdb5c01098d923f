#!/usr/bin/env bash
# Release the current commit's models as version VERSION: push their data to the default DVC remote and tag
# each artifact of dvc.yaml as DVC's model registry expects (`<artifact>@v<VERSION>`), so that
#   dvc artifacts get <repository> <artifact>            (the newest version)
#   dvc artifacts get <repository> <artifact> --rev <artifact>@v<VERSION>
# fetch them. Then publish the tags: git push origin --tags
#   usage: scripts/release.sh 0.4.0        (make release VERSION=0.4.0)
set -euo pipefail
version="${1:?usage: scripts/release.sh VERSION (e.g. 0.4.0)}"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "error: VERSION $version is not X.Y.Z" >&2; exit 1; }
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "error: uncommitted changes: release a committed state" >&2; exit 1
fi
if [ -n "$(dvc status --quiet 2>&1 || echo changed)" ]; then
  echo "error: the pipeline is not up to date with dvc.lock: run dvc repro and commit first" >&2; exit 1
fi
dvc push
names="$(python -c 'import yaml; print(" ".join(yaml.safe_load(open("dvc.yaml"))["artifacts"]))')"
for name in $names; do
  git tag -a "${name}@v${version}" -m "Release ${name} v${version}"
  echo "tagged ${name}@v${version}"
done
echo "now publish the tags: git push origin --tags"
