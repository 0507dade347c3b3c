#!/bin/sh
# A demo "VM": a workload process alone in its own network namespace, and the node agent.
set -e
mkdir -p /run /var/lib/overlay/agent
unshare -n sleep 2147483647 &
echo $! > /run/workload.pid
exec overlay-agent
