#!/usr/bin/env bash
# durability_compare.sh: fermata-server's WAL and snapshots against
# redis-server's AOF and RDB, same client, same machine, same run
# (FACTS.md: these machines vary up to 2x between runs, so only ratios
# measured side by side mean anything). Issue 4, "What it must reach".
#
#   bench/durability_compare.sh [path/to/fermata-server] [rows|quick] [parts]
#
# rows is the size of the restart data set (default 10000000; "quick" means
# 200000); parts (default "write restart") picks what runs:
#
#   write    durable write throughput. For fsync always and everysec, a fresh
#            pair of servers: fermata --fsync P (snapshots off) and Redis
#            --appendonly yes --appendfsync P (RDB saving off, no AOF
#            rewrite). redis-benchmark without pipelining, 1, 10 and 50
#            clients, runs the same count of requests on each of
#              INSERT artists name x   vs   HSET artist:__rand_int__ name x
#            ROUNDS times (default 3), fermata and Redis alternating; the
#            table shows the median ops/s and the p50/p99 of that run.
#   restart  the data set: 1 album, rows/100 users, min(rows, 100000)
#            tracks and `rows` user_track_history rows with unique
#            (user_id, track_id) pairs (user i/100+1, track i%100000+1),
#            loaded into fermata (--fsync no) with redis-cli --pipe, and
#            the same rows as hashes into Redis (appendonly yes, appendfsync
#            no): HSET hist:<id> user_id U track_id T listen_count C, and
#            user:<id>, track:<id>, album:1 with the same fields. Then, one
#            server at a time (memory):
#              fermata: SHUTDOWN NOSAVE; restart from the WAL alone; SAVE;
#                BGSAVE; SHUTDOWN NOSAVE; restart from the snapshot (and
#                the WAL's active segment, which still holds the tail).
#              Redis: SAVE; BGSAVE; SHUTDOWN NOSAVE; restart from the AOF
#                (plain commands: aof-use-rdb-preamble no, never
#                rewritten); restart with appendonly no from the RDB.
#            A restart is timed from the exec of the server until PING
#            answers PONG (polled every 10 ms; Redis answers -LOADING
#            while it loads); the servers' own figures ("recovered N rows
#            ... in X s", "DB loaded from ...: X seconds") are shown too.
#
# Everything lives in a temp dir under /tmp that is removed at exit. Both
# servers listen on loopback only: fermata on port 0 (the port is read from
# its "Ready to accept connections" line), Redis on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-build/release/server/fermata-server}
rows=${2:-10000000}
parts=${3:-write restart}
rounds=${ROUNDS:-3}
[ "$rows" = quick ] && rows=200000

for tool in redis-server redis-cli redis-benchmark python3 awk; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$server" ] || { echo "no fermata-server at $server (build Release first)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/durability_compare.XXXXXX)
fm_pid=
redis_pid=
kill_wait() { # pid: SIGTERM, then wait for the process to be gone
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
stop_servers() {
    [ -n "$fm_pid" ] && kill_wait "$fm_pid"
    [ -n "$redis_pid" ] && kill_wait "$redis_pid"
    fm_pid=
    redis_pid=
}
cleanup() {
    stop_servers
    rm -rf "$tmp"
}
trap cleanup EXIT

now() { date +%s.%N; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fm_start LOG ARGS...: starts fermata-server, sets fm_pid and fm_port once
# it answers PONG, and t_ready to the seconds that took.
fm_start() {
    local log=$1 t0
    shift
    t0=$(now)
    "$server" --port 0 --bind 127.0.0.1 "$@" >"$log" 2>&1 &
    fm_pid=$!
    fm_port=
    while :; do
        if [ -z "$fm_port" ]; then
            fm_port=$(sed -n 's/.*Ready to accept connections tcp on .*:\([0-9]*\)$/\1/p' "$log" | head -n 1)
        fi
        if [ -n "$fm_port" ] && [ "$(redis-cli -p "$fm_port" PING 2>/dev/null)" = PONG ]; then
            break
        fi
        kill -0 "$fm_pid" 2>/dev/null || { cat "$log" >&2; echo "fermata-server exited" >&2; exit 1; }
        sleep 0.01
    done
    t_ready=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
}

# redis_start LOG ARGS...: the same for redis-server (redis_pid,
# redis_port, t_ready).
redis_start() {
    local log=$1 t0
    shift
    redis_port=$(free_port)
    t0=$(now)
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize no \
        --logfile "$log" "$@" &
    redis_pid=$!
    until [ "$(redis-cli -p "$redis_port" PING 2>/dev/null)" = PONG ]; do
        kill -0 "$redis_pid" 2>/dev/null || { cat "$log" >&2; echo "redis-server exited" >&2; exit 1; }
        sleep 0.01
    done
    t_ready=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
}

# shutdown_nosave PORT PID: SHUTDOWN NOSAVE and wait for the exit.
shutdown_nosave() {
    redis-cli -p "$1" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    wait "$2" 2>/dev/null || true
}

info_field() { # port field
    redis-cli -p "$1" INFO persistence | tr -d '\r' | sed -n "s/^$2://p"
}

rss_mb() { # pid
    awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# ---------------------------------------------------------------- write

# CPU seconds (user + system) a process has used so far.
cpu_s() { # pid
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# run PORT PID CLIENTS REQUESTS COMMAND... -> "rps p50_ms p99_ms srv_us":
# srv_us is the server's (PID's) CPU microseconds per request.
run() {
    local port=$1 pid=$2 clients=$3 n=$4 s0 s1
    shift 4
    s0=$(cpu_s "$pid")
    redis-benchmark -p "$port" -c "$clients" -n "$n" -P 1 -r 1000000 --csv "$@" 2>/dev/null |
        awk -F'","' 'NR == 2 { gsub(/"/, "", $7); print $2, $5, $7 }' >"$tmp/run.out"
    s1=$(cpu_s "$pid")
    awk -v s0="$s0" -v s1="$s1" -v n="$n" '{ printf "%s %s %s %.2f\n", $1, $2, $3, (s1 - s0) * 1e6 / n }' "$tmp/run.out"
}

# median of ROUNDS "rps p50 p99" lines on stdin, by rps
median() {
    sort -n -k1,1 | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }'
}

write_part() {
    local policy clients n fm rd r
    echo "## Durable writes: INSERT artists name x vs HSET artist:__rand_int__ name x"
    echo
    echo "No pipelining; median of $rounds runs by ops/s; latency in ms; srv: the"
    echo "server's CPU microseconds per request in that run."
    echo
    echo "| fsync    |  c | fermata ops/s | Redis ops/s | ratio | fm p50 | rd p50 | fm p99 | rd p99 | fm srv | rd srv |"
    echo "|----------|---:|--------------:|------------:|------:|-------:|-------:|-------:|-------:|-------:|-------:|"
    for policy in always everysec; do
        rm -rf "$tmp/w"
        mkdir -p "$tmp/w/redis"
        fm_start "$tmp/w/fermata.log" --dir "$tmp/w/fermata" --fsync "$policy" \
            --snapshot-interval 2000000000 --snapshot-wal-mb 2000000000
        redis_start "$tmp/w/redis.log" --dir "$tmp/w/redis" --save '' \
            --appendonly yes --appendfsync "$policy" --auto-aof-rewrite-percentage 0
        for clients in 1 10 50; do
            case $policy/$clients in
            always/1) n=4000 ;;
            always/10) n=20000 ;;
            always/*) n=50000 ;;
            */1) n=40000 ;;
            *) n=100000 ;;
            esac
            : >"$tmp/w/fm" && : >"$tmp/w/rd"
            for ((r = 0; r < rounds; r++)); do
                run "$fm_port" "$fm_pid" "$clients" "$n" INSERT artists name x >>"$tmp/w/fm"
                run "$redis_port" "$redis_pid" "$clients" "$n" HSET 'artist:__rand_int__' name x >>"$tmp/w/rd"
            done
            fm=$(median <"$tmp/w/fm")
            rd=$(median <"$tmp/w/rd")
            # shellcheck disable=SC2086
            set -- $fm $rd
            awk -v p="$policy" -v c="$clients" -v f="$1" -v fp5="$2" -v fp9="$3" -v fs="$4" \
                -v r="$5" -v rp5="$6" -v rp9="$7" -v rs="$8" 'BEGIN {
                printf "| %-8s | %2s | %13.0f | %11.0f | %5.2f | %6.3f | %6.3f | %6.3f | %6.3f | %6.2f | %6.2f |\n",
                    p, c, f, r, (r > 0 ? f / r : 0), fp5, rp5, fp9, rp9, fs, rs }'
        done
        stop_servers
    done
    echo
}

# -------------------------------------------------------------- restart

n_users=$(((rows + 99) / 100))
n_tracks=$((rows < 100000 ? rows : 100000))
n_total=$((1 + n_users + n_tracks + rows))

# gen fermata|redis: the data set as inline commands, parents first
gen() {
    awk -v n="$rows" -v nu="$n_users" -v nt="$n_tracks" -v to="$1" 'BEGIN {
        if (to == "fermata") {
            printf "INSERT albums title album1 year 2000\r\n";
            for (i = 1; i <= nu; i++)
                printf "INSERT users username user%d email user%d@example.com password_digest 5f4dcc3b5aa765d61d8327deb882cf99 session_token tok%d\r\n", i, i, i;
            for (i = 1; i <= nt; i++)
                printf "INSERT tracks title track%d song_url http://example.com/t/%d album_id 1 popularity %d\r\n", i, i, i % 100;
            for (i = 0; i < n; i++)
                printf "INSERT user_track_history user_id %d track_id %d listen_count %d\r\n", int(i / 100) + 1, i % 100000 + 1, i % 50 + 1;
        } else {
            printf "HSET album:1 title album1 year 2000\r\n";
            for (i = 1; i <= nu; i++)
                printf "HSET user:%d username user%d email user%d@example.com password_digest 5f4dcc3b5aa765d61d8327deb882cf99 session_token tok%d\r\n", i, i, i, i;
            for (i = 1; i <= nt; i++)
                printf "HSET track:%d title track%d song_url http://example.com/t/%d album_id 1 popularity %d\r\n", i, i, i, i % 100;
            for (i = 0; i < n; i++)
                printf "HSET hist:%d user_id %d track_id %d listen_count %d\r\n", i + 1, int(i / 100) + 1, i % 100000 + 1, i % 50 + 1;
        }
    }'
}

# load PORT fermata|redis -> seconds; fails on any error reply
load() {
    local t0 out
    t0=$(now)
    out=$(gen "$2" | redis-cli -p "$1" --pipe)
    case $out in
    *"errors: 0,"*) ;;
    *) echo "$out" >&2; echo "load into $2 failed" >&2; exit 1 ;;
    esac
    awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'
}

# timed PORT COMMAND... -> seconds the command took
timed() {
    local port=$1 t0
    shift
    t0=$(now)
    redis-cli -p "$port" "$@" >/dev/null
    awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'
}

# bg_wait PORT FIELD: polls INFO persistence until FIELD is 0
bg_wait() {
    while [ "$(info_field "$1" "$2")" != 0 ]; do sleep 0.01; done
}

dbsize_check() { # port name
    local got
    got=$(redis-cli -p "$1" DBSIZE)
    [ "$got" = "$n_total" ] || { echo "$2 holds $got rows/keys after restart, expected $n_total" >&2; exit 1; }
}

restart_part() {
    local fm_flags t0 d
    fm_flags=(--dir "$tmp/fm" --fsync no --snapshot-interval 2000000000
        --snapshot-wal-mb 2000000000)

    # fermata: load, WAL-only restart, SAVE, BGSAVE, snapshot restart.
    fm_start "$tmp/fm-load.log" "${fm_flags[@]}"
    fm_load_s=$(load "$fm_port" fermata)
    fm_rss=$(rss_mb "$fm_pid")
    fm_wal_bytes=$(info_field "$fm_port" wal_bytes)
    shutdown_nosave "$fm_port" "$fm_pid"
    fm_pid=

    fm_start "$tmp/fm-wal.log" "${fm_flags[@]}"
    fm_wal_ready=$t_ready
    fm_wal_line=$(grep -o 'recovered .*' "$tmp/fm-wal.log" | head -n 1)
    dbsize_check "$fm_port" fermata
    fm_save_s=$(timed "$fm_port" SAVE)
    fm_save_us=$(info_field "$fm_port" last_snapshot_duration_usec)
    fm_snap_bytes=$(info_field "$fm_port" last_snapshot_bytes)
    fm_snap_raw=$(info_field "$fm_port" last_snapshot_raw_bytes)
    t0=$(now)
    redis-cli -p "$fm_port" BGSAVE >/dev/null
    bg_wait "$fm_port" bgsave_in_progress
    fm_bgsave_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    fm_bgsave_us=$(info_field "$fm_port" last_snapshot_duration_usec)
    fm_fork_us=$(info_field "$fm_port" last_fork_usec)
    fm_cow=$(info_field "$fm_port" last_cow_bytes)
    shutdown_nosave "$fm_port" "$fm_pid"
    fm_pid=
    fm_dir_files=$(find "$tmp/fm" -maxdepth 1 \( -name "*.wal" -o -name "*.snap" \) -printf "%f %s; " | sort)

    fm_start "$tmp/fm-snap.log" "${fm_flags[@]}"
    fm_snap_ready=$t_ready
    fm_snap_line=$(grep -o 'recovered .*' "$tmp/fm-snap.log" | head -n 1)
    dbsize_check "$fm_port" fermata
    shutdown_nosave "$fm_port" "$fm_pid"
    fm_pid=
    rm -rf "$tmp/fm"

    # Redis: load with the AOF on, SAVE, BGSAVE, AOF restart, RDB restart.
    d=$tmp/rd
    mkdir -p "$d"
    redis_start "$tmp/rd-load.log" --dir "$d" --save '' --appendonly yes \
        --appendfsync no --auto-aof-rewrite-percentage 0 --aof-use-rdb-preamble no
    rd_load_s=$(load "$redis_port" redis)
    rd_rss=$(rss_mb "$redis_pid")
    rd_save_s=$(timed "$redis_port" SAVE)
    rd_rdb_bytes=$(stat -c %s "$d/dump.rdb")
    t0=$(now)
    redis-cli -p "$redis_port" BGSAVE >/dev/null
    sleep 0.01
    bg_wait "$redis_port" rdb_bgsave_in_progress
    rd_bgsave_s=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    rd_fork_us=$(redis-cli -p "$redis_port" INFO stats | tr -d '\r' | sed -n 's/^latest_fork_usec://p')
    rd_cow=$(info_field "$redis_port" rdb_last_cow_size)
    shutdown_nosave "$redis_port" "$redis_pid"
    redis_pid=
    rd_aof_bytes=$(du -sb "$d/appendonlydir" | awk '{ print $1 }')

    redis_start "$tmp/rd-aof.log" --dir "$d" --save '' --appendonly yes \
        --appendfsync no --auto-aof-rewrite-percentage 0 --aof-use-rdb-preamble no
    rd_aof_ready=$t_ready
    rd_aof_line=$(grep -o 'DB loaded from .*' "$tmp/rd-aof.log" | head -n 1)
    dbsize_check "$redis_port" Redis
    shutdown_nosave "$redis_port" "$redis_pid"
    redis_pid=

    redis_start "$tmp/rd-rdb.log" --dir "$d" --save '' --appendonly no
    rd_rdb_ready=$t_ready
    rd_rdb_line=$(grep -o 'DB loaded from .*' "$tmp/rd-rdb.log" | head -n 1)
    dbsize_check "$redis_port" Redis
    shutdown_nosave "$redis_port" "$redis_pid"
    redis_pid=
    rm -rf "$d"

    echo "## Restart, $n_total rows ($rows user_track_history, $n_users users, $n_tracks tracks, 1 album)"
    echo
    echo "Until PING answers, from the exec of the server; rows/s = $n_total / seconds."
    echo
    echo "| restart from            | fermata s | Redis s | ratio (Redis/fermata time) | fermata rows/s | Redis keys/s |"
    echo "|-------------------------|----------:|--------:|------:|---------------:|-------------:|"
    awk -v n="$n_total" -v f="$fm_snap_ready" -v r="$rd_rdb_ready" 'BEGIN {
        printf "| snapshot vs RDB         | %9.3f | %7.3f | %5.2f | %14.0f | %12.0f |\n", f, r, r / f, n / f, n / r }'
    awk -v n="$n_total" -v f="$fm_wal_ready" -v r="$rd_aof_ready" 'BEGIN {
        printf "| WAL alone vs AOF        | %9.3f | %7.3f | %5.2f | %14.0f | %12.0f |\n", f, r, r / f, n / f, n / r }'
    echo
    echo "Servers' own figures:"
    echo
    echo "- fermata, snapshot: $fm_snap_line"
    echo "- fermata, WAL:      $fm_wal_line"
    echo "- Redis, RDB:        $rd_rdb_line"
    echo "- Redis, AOF:        $rd_aof_line"
    echo
    echo "## Snapshot write, $n_total rows"
    echo
    echo "| what                         |    fermata |      Redis | ratio fermata/Redis |"
    echo "|------------------------------|-----------:|-----------:|------:|"
    awk -v f="$fm_save_s" -v r="$rd_save_s" 'BEGIN {
        printf "| SAVE, s (client)             | %10.3f | %10.3f | %5.2f |\n", f, r, f / r }'
    awk -v f="$fm_bgsave_s" -v r="$rd_bgsave_s" 'BEGIN {
        printf "| BGSAVE until done, s         | %10.3f | %10.3f | %5.2f |\n", f, r, f / r }'
    awk -v f="$fm_snap_bytes" -v r="$rd_rdb_bytes" 'BEGIN {
        printf "| snapshot / RDB, MB           | %10.1f | %10.1f | %5.2f |\n", f / 1e6, r / 1e6, f / r }'
    awk -v f="$fm_wal_bytes" -v r="$rd_aof_bytes" 'BEGIN {
        printf "| WAL / AOF after the load, MB | %10.1f | %10.1f | %5.2f |\n", f / 1e6, r / 1e6, f / r }'
    awk -v f="$fm_rss" -v r="$rd_rss" 'BEGIN {
        printf "| RSS after the load, MB       | %10.0f | %10.0f | %5.2f |\n", f, r, f / r }'
    awk -v f="$fm_load_s" -v r="$rd_load_s" -v n="$n_total" 'BEGIN {
        printf "| load via --pipe, rows/s      | %10.0f | %10.0f | %5.2f |\n", n / f, n / r, r / f }'
    echo
    echo "fermata: SAVE took ${fm_save_us} us and BGSAVE ${fm_bgsave_us} us by INFO;" \
        "snapshot ${fm_snap_bytes} bytes from ${fm_snap_raw} uncompressed;" \
        "fork ${fm_fork_us} us, copy-on-write ${fm_cow} bytes."
    echo "fermata files before the snapshot restart: ${fm_dir_files}"
    echo "Redis: RDB ${rd_rdb_bytes} bytes, AOF ${rd_aof_bytes} bytes;" \
        "fork ${rd_fork_us} us, copy-on-write ${rd_cow} bytes."
    echo
}

echo "fermata-server: $server; $(redis-server --version | cut -d' ' -f1-3)"
echo
for part in $parts; do
    case $part in
    write) write_part ;;
    restart) restart_part ;;
    *) echo "unknown part $part" >&2; exit 1 ;;
    esac
done
