#!/usr/bin/env bash
# redis_compare.sh: fermata-server against redis-server, same client, same
# machine, same run (FACTS.md: these machines vary up to 2x between runs, so
# only ratios measured side by side mean anything).
#
#   bench/redis_compare.sh [path/to/fermata-server] [requests] [modes]
#
# modes (default "off default"), each a fresh pair of servers on loopback:
#   off      no persistence: fermata --dir "" (no WAL), Redis --save ''
#            --appendonly no
#   default  each with its default durability: fermata's WAL with fsync
#            everysec (snapshots hourly); Redis' default RDB saving and no AOF
#   always   fermata --fsync always; Redis --appendonly yes
#            --appendfsync always (one fdatasync per loop turn for both)
#
# Each pair of commands runs with redis-benchmark -c 50, without pipelining
# and with -P 16, and the script prints requests/s and p99 latency of both,
# the ratio fermata/Redis, and the CPU time per request of each server and
# of redis-benchmark (on 2 cores the client can be the limit: then its
# column is near 1e6/rate microseconds and the ratio measures the client):
#
#   PING                                      vs PING
#   GET tracks __rand_int__                   vs GET key:__rand_int__
#   GET tracks __rand_int__                   vs HGETALL track:__rand_int__
#       (ROW: the same reply on both sides, a 16-element array of the
#       track's 8 columns; GET of a short string is the issue's pair, but
#       the client parses 17 RESP values per fermata reply against 1)
#   INSERT artists name x                     vs HSET artist:__rand_int__ name x
#   UPSERT user_track_history user_id 1 track_id 1
#          INCR listen_count 1                vs HINCRBY user:1 listen_count 1
#
# Seed data (10,000 albums, tracks and users; 10,000 Redis strings and
# 10,000 track hashes) is loaded first with redis-cli --pipe. __rand_int__
# runs over 0..9999, so GET tracks 0 (no such row: nil) happens for 1
# request in 10,000. UPSERT uses one fixed row (and HINCRBY one fixed key):
# redis-benchmark exits at the first error reply, and __rand_int__ can be
# 0, which is never a row id, so a random user_id would fail its foreign
# key now and then.
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-build/release/server/fermata-server}
requests=${2:-200000}
modes=${3:-off default}
keys=10000
clients=50

for tool in redis-server redis-cli redis-benchmark python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$server" ] || { echo "no fermata-server at $server (build Release first)" >&2; exit 1; }

tmp=$(mktemp -d)
fm_pid=
redis_pid=
stop_servers() {
    [ -n "$fm_pid" ] && kill "$fm_pid" 2>/dev/null || true
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    fm_pid=
    redis_pid=
}
cleanup() {
    stop_servers
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # port
    for _ in $(seq 200); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

start_servers() { # mode
    local mode=$1 fm_args rd_args
    rm -rf "$tmp/fermata" "$tmp/redis"
    mkdir -p "$tmp/redis"
    case $mode in
    off)
        fm_args=(--dir "")
        rd_args=(--save '' --appendonly no)
        ;;
    default)
        fm_args=(--dir "$tmp/fermata")
        rd_args=()
        ;;
    always)
        fm_args=(--dir "$tmp/fermata" --fsync always)
        rd_args=(--save '' --appendonly yes --appendfsync always)
        ;;
    *)
        echo "unknown mode $mode" >&2
        exit 1
        ;;
    esac
    "$server" --port 0 "${fm_args[@]}" >"$tmp/fermata.log" 2>&1 &
    fm_pid=$!
    fm_port=
    for _ in $(seq 200); do
        fm_port=$(sed -n 's/.*Ready to accept connections tcp on .*:\([0-9]*\)$/\1/p' "$tmp/fermata.log" | head -n 1)
        [ -n "$fm_port" ] && break
        sleep 0.05
    done
    [ -n "$fm_port" ] || { cat "$tmp/fermata.log" >&2; exit 1; }
    wait_ready "$fm_port"

    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 "${rd_args[@]}" \
        --daemonize no --logfile "$tmp/redis.log" --dir "$tmp/redis" &
    redis_pid=$!
    wait_ready "$redis_port"
}

seed() {
    awk -v n=$keys 'BEGIN {
        for (i = 1; i <= n; i++) printf "INSERT albums title album%d year 2000\r\n", i;
        for (i = 1; i <= n; i++) printf "INSERT tracks title track%d song_url http://t/%d album_id %d popularity %d\r\n", i, i, i, i % 100;
        for (i = 1; i <= n; i++) printf "INSERT users username u%d email u%d@example.com password_digest x session_token s%d\r\n", i, i, i;
    }' | redis-cli -p "$fm_port" --pipe >/dev/null
    # The Redis hashes carry what GET tracks returns, field for field, with
    # the datetimes of the fermata row as text (genre_id NULL: empty).
    local now
    now=$(redis-cli -p "$fm_port" GET tracks 1 | sed -n 14p)
    awk -v n=$keys -v now="$now" 'BEGIN {
        for (i = 0; i < n; i++) printf "SET key:%012d value%d\r\n", i, i;
        for (i = 0; i < n; i++) printf "HSET track:%012d id %d title track%d song_url http://t/%d album_id %d popularity %d genre_id \"\" created_at %s updated_at %s\r\n", i, i, i, i, i, i % 100, now, now;
    }' | redis-cli -p "$redis_port" --pipe >/dev/null
}

# CPU seconds (user + system) a process has used so far.
cpu_s() { # pid
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# run PORT PID PIPELINE COMMAND... -> "rps p99_ms server_us client_us": the
# last two are the CPU microseconds per request that the server (PID) and
# redis-benchmark spent, which say which side of the pair was the limit.
run() {
    local port=$1 pid=$2 pipe=$3 out s0 s1 TIMEFORMAT='%U %S'
    shift 3
    s0=$(cpu_s "$pid")
    out=$( { time redis-benchmark -p "$port" -c "$clients" -n "$requests" \
        -P "$pipe" -r "$keys" --csv "$@" 2>/dev/null; } 2>&1)
    s1=$(cpu_s "$pid")
    awk -v s0="$s0" -v s1="$s1" -v n="$requests" -F'","' '
        NR == 2 { gsub(/"/, "", $2); gsub(/"/, "", $7); rps = $2; p99 = $7 }
        NF == 1 && split($0, t, " ") == 2 { cl = t[1] + t[2] }
        END { printf "%s %s %.2f %.2f\n", rps, p99, (s1 - s0) * 1e6 / n, cl * 1e6 / n }' <<<"$out"
}

compare() { # name, fermata command, redis command (strings, split on spaces)
    local name=$1 fm_cmd=$2 rd_cmd=$3 pipe fm rd
    for pipe in 1 16; do
        # shellcheck disable=SC2086
        fm=$(run "$fm_port" "$fm_pid" "$pipe" $fm_cmd)
        # shellcheck disable=SC2086
        rd=$(run "$redis_port" "$redis_pid" "$pipe" $rd_cmd)
        set -- $fm $rd
        awk -v m="$mode" -v n="$name" -v p="$pipe" -v f="$1" -v fp="$2" -v fs="$3" -v fc="$4" \
            -v r="$5" -v rp="$6" -v rs="$7" -v rc="$8" \
            'BEGIN { printf "| %-7s | %-6s | %2s | %9.0f | %9.0f | %5.2f | %6.3f | %6.3f | %5.2f | %5.2f | %5.2f | %5.2f |\n", m, n, p, f, r, (r > 0 ? f / r : 0), fp, rp, fs, rs, fc, rc }'
    done
}

echo "requests per run: $requests, clients: $clients, seed: $keys rows per table / keys"
echo
echo "| mode    | test   |  P | fermata/s |   redis/s | ratio | fm p99 | rd p99 | fm srv | rd srv | fm cli | rd cli |"
echo "|---------|--------|---:|----------:|----------:|------:|-------:|-------:|-------:|-------:|-------:|-------:|"
for mode in $modes; do
    start_servers "$mode"
    seed
    compare PING "PING" "PING"
    compare GET "GET tracks __rand_int__" "GET key:__rand_int__"
    compare ROW "GET tracks __rand_int__" "HGETALL track:__rand_int__"
    compare INSERT "INSERT artists name x" "HSET artist:__rand_int__ name x"
    compare UPSERT "UPSERT user_track_history user_id 1 track_id 1 INCR listen_count 1" \
        "HINCRBY user:1 listen_count 1"
    stop_servers
done
echo
echo "p99 in milliseconds; ratio = fermata/Redis requests per second; srv and cli"
echo "are the CPU microseconds per request of the server and of redis-benchmark"
echo "(a side near 1e6/rate us per request was the pair's limit)."
