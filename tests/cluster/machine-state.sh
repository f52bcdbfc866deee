#!/usr/bin/env bash
# Prints what a node changes on this machine, sorted, so that two prints can be
# compared: processes of the node's programs, mounts, iptables chains and rules,
# addresses, routes, links, cgroups and the machine-wide directories the
# kubelet, containerd and CNI write to. scripts/test.sh prints it before
# node-up and after node-down, and fails if the two differ.
set -uo pipefail
echo "## processes"
ps -eo stat=,comm= | awk '$1 !~ /^Z/ {print $2}' | grep -E '^(containerd|containerd-shim|runc|kubelet|kube-scheduler|pause|teamaccess-oper)' | sort | uniq -c
echo "## mounts"
awk '{print $5, $9}' /proc/self/mountinfo | grep -vE '^/proc/[0-9]+' | sort
echo "## iptables"
for t in iptables ip6tables; do
  for table in filter nat mangle; do
    "$t" -t "$table" -S 2>/dev/null | sed "s/^/$t $table /"
  done
done
echo "## addresses"
ip -o addr show | awk '{print $2, $3, $4}' | sort
echo "## routes"
ip route show table all | grep -vE '^(local|broadcast) ' | sort
echo "## links"
ip -o link show | awk -F': ' '{print $2}' | sort
echo "## cgroups"
for root in $(awk '$9 ~ /^cgroup2?$/ {print $5}' /proc/self/mountinfo); do
  find "$root" -mindepth 1 -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null
done | sort
echo "## files"
for d in /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /var/run/netns /etc/cni /run/teamaccess-node; do
  [[ -e "$d" ]] && find "$d" 2>/dev/null
done | sort
