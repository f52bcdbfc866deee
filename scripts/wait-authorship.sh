#!/usr/bin/env bash
# Waits until the API server stamps TeamAccess writes with the authorship policy
# of release PREFIX (default teamaccess-operator). A policy is enforced a moment
# after it is written, and the operator grants nothing for a TeamAccess written
# in that moment (it carries no stamp): call this between installing the
# policies and applying TeamAccess objects. Uses kubectl as configured.
set -euo pipefail
prefix="${1:-teamaccess-operator}"
key="$prefix.author.teamaccess.dev/epoch"
probe='{"apiVersion": "teamaccess.dev/v1alpha1", "kind": "TeamAccess", "metadata": {"name": "authorship-probe"},
        "spec": {"group": {"objectId": "00000000-0000-0000-0000-000000000000"}, "namespace": "authorship-probe", "verbs": ["get"]}}'
for _ in $(seq 1 150); do
  # A server-side dry run passes admission, mutating policies included, and writes nothing.
  if kubectl create --dry-run=server -o json -f - <<<"$probe" 2>/dev/null | grep -qF "\"$key\""; then
    exit 0
  fi
  sleep 0.2
done
echo "TeamAccess writes are not stamped by $prefix-authorship after 30s: is deploy/admission-policy.yaml (or the chart's admissionPolicy) installed?" >&2
exit 1
