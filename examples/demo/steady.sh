#!/bin/sh
# A steady worker: does a unit of work every 2 seconds, forever.
n=0
trap 'echo "got SIGTERM after $n items, exiting cleanly"; exit 0' TERM
while :; do
  n=$((n + 1))
  echo "processed item $n"
  sleep 2 &
  wait $!
done
