#!/usr/bin/env bash
# The whole suite's wall time at two commits, one right after the other on this machine: each
# commit runs in a temporary worktree with its own test command (the pytest line of its
# scripts/test, so its own xdist options), on the PostgreSQL and Redis already running.
#
#   scripts/setup && scripts/services   # once, first: the venv, PostgreSQL, Redis
#   bench/tests.sh [OLD [NEW]] [-- PYTEST_ARGS]
#
# OLD defaults to the commit before tests/unit existed (one process, every SQLite test
# migrating its own database), NEW to HEAD. PYTEST_ARGS default to CI's: -q --durations=25.
# The logs are kept in test-artifacts/bench-tests-<commit>.log. Run it on an otherwise idle
# machine: both figures move with whatever else runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
created=$(git log --no-renames --format=%H --diff-filter=A -1 -- tests/unit/test_train.py)
old=$(git rev-parse "${created}^") new=$(git rev-parse HEAD)
if [ $# -gt 0 ] && [ "$1" != "--" ]; then old=$(git rev-parse "$1"); shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then new=$(git rev-parse "$1"); shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
[ $# -gt 0 ] || set -- -q --durations=25
export LSQ_TEST_PG_URL=${LSQ_TEST_PG_URL:-postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres}
mkdir -p test-artifacts
scratch=$(mktemp -d)
cleanup() {
    for tree in "$scratch"/*/; do
        if [ -d "$tree" ]; then git worktree remove --force "$tree"; fi
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

run() {  # COMMIT PYTEST_ARGS...: one line, the commit's wall time and pytest's last line
    local commit=${1:0:10} options tree log
    shift
    tree=$scratch/$commit log=$root/test-artifacts/bench-tests-$commit.log
    git worktree add -q --detach "$tree" "$commit"
    ln -s "$root/.venv" "$tree/.venv"
    # The commit's own options, without its set-up: scripts/setup would install the project
    # from the temporary worktree into the shared venv.
    options=$(sed -n 's/^exec \.venv\/bin\/pytest \(.*\)"\$@"$/\1/p' "$tree/scripts/test")
    SECONDS=0
    (cd "$tree" && eval "PYTHONPATH=\$PWD .venv/bin/pytest $options \"\$@\"" >"$log" 2>&1) || true
    echo "$commit: ${SECONDS} s for pytest ${options}$* -> $(tail -n 1 "$log")"
}

run "$old" "$@"
run "$new" "$@"
