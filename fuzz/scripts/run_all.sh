#!/bin/sh
# Runs the four main targets one after the other, 30 minutes each (or $1 seconds).
cd "$(dirname "$0")/.."
for t in mqtt_packets mqtt_connect envelope compact; do
  scripts/run.sh "$t" "${1:-1800}"
done
