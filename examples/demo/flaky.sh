#!/bin/sh
# A worker that crashes now and then: runs 3-8 seconds, then fails with exit 1.
life=$(( $(od -An -N1 -tu1 /dev/urandom) % 6 + 3 ))
echo "starting, will crash in ${life}s"
sleep "$life"
echo "simulated crash: connection reset by peer" >&2
exit 1
