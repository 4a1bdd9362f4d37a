#!/usr/bin/env bash
# Runs every algorithm on D'Claw's three smoke datasets (seed 0; D'Claw because its smoke
# SAC expert already beats the random policy, so normalized scores are defined) and publishes the runs to the
# leaderboard: the pipeline's own end-to-end record, labelled `smoke` (those scores mean nothing).
# Run it from a clean checkout so every row names an exact commit.
set -euo pipefail
cd "$(dirname "$0")/.."
LB=${LB:-.venv/bin/lompo-bench}
export LOMPO_BENCH_HOME=${LOMPO_BENCH_HOME:-$PWD/demo-output/smoke-home}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
$LB collect dclaw-screw --split all --profile smoke
runs=()
for algo in lompo lmbrl slac cql bc; do
  for split in medium-replay medium-expert expert; do
    $LB run "$algo" --env dclaw-screw --split "$split" --profile smoke --no-progress
    runs+=("$LOMPO_BENCH_HOME/runs/$algo/smoke/dclaw-screw/$split/seed0")
  done
done
$LB leaderboard publish "${runs[@]}"
$LB leaderboard table --format md --out leaderboard/RESULTS.md
