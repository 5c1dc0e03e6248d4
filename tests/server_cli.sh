#!/bin/sh
# server_cli.sh: fermata-server driven by real Redis tools.
#
#   tests/server_cli.sh path/to/fermata-server
#
# Starts the server on a free port (port 0, read back from its log), then
# talks to it with redis-cli, with nc (inline commands with quoting, as a
# person types them into telnet) and with a short redis-benchmark run, which
# must report no error. Exits 77 (skipped) when a tool is missing.
set -u

server=${1:?usage: server_cli.sh path/to/fermata-server}
for tool in redis-cli redis-benchmark nc; do
    command -v "$tool" >/dev/null 2>&1 || { echo "skip: no $tool"; exit 77; }
done

tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

expect() { # expect NAME WANT GOT
    if [ "$2" = "$3" ]; then
        echo "ok: $1"
    else
        fail "$1: want [$2] got [$3]"
    fi
}

# Bad flags stop the start with a message and status 1.
"$server" --port 99999 >"$tmp/bad.out" 2>&1
expect "bad port exits 1" 1 $?
grep -q "port" "$tmp/bad.out" || fail "bad port message: $(cat "$tmp/bad.out")"
"$server" --no-such-flag 1 >"$tmp/bad.out" 2>&1
expect "unknown flag exits 1" 1 $?

printf 'maxclients 64\n# comment\nloglevel verbose\n' >"$tmp/fermata.conf"
"$server" --config "$tmp/fermata.conf" --port 0 --dir "$tmp/data" \
    >"$tmp/server.log" 2>&1 &
pid=$!

# Wait for the "Ready to accept connections" line (bounded).
port=
i=0
while [ $i -lt 200 ]; do
    port=$(sed -n 's/.*Ready to accept connections tcp on .*:\([0-9]*\)$/\1/p' \
        "$tmp/server.log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    i=$((i + 1))
    sleep 0.05
done
if [ -z "$port" ]; then
    cat "$tmp/server.log"
    echo "FAIL: the server did not start"
    exit 1
fi
echo "server on port $port"

cli() { redis-cli -p "$port" "$@"; }

expect "PING" "PONG" "$(cli PING)"
expect "ECHO" "hello world" "$(cli ECHO 'hello world')"
expect "INSERT" "1" "$(cli INSERT artists name 'Miles Davis')"
expect "GET" "$(printf 'id\n1\nname\nMiles Davis')" \
    "$(cli GET artists 1 | head -n 4)"
expect "DBSIZE" "1" "$(cli DBSIZE)"
expect "CONFIG GET port" "$(printf 'port\n%s' "$port")" "$(cli CONFIG GET port)"
expect "CONFIG from file" "$(printf 'maxclients\n64')" \
    "$(cli CONFIG GET maxclients)"
expect "CONFIG SET" "OK" "$(cli CONFIG SET max-args 1000)"
expect "HELLO 3" "NOPROTO unsupported protocol version: fermata speaks RESP2 only" \
    "$(cli HELLO 3)"
expect "SELECT 0" "OK" "$(cli SELECT 0)"
cli INFO | grep -q '^fermata_version:' || fail "INFO has no fermata_version"
cli INFO keyspace | grep -q '^artists:rows=1,' || fail "INFO keyspace"
case "$(cli FROB x)" in
"ERR unknown command 'FROB', with args beginning with: 'x' ") echo "ok: unknown" ;;
*) fail "unknown command: $(cli FROB x)" ;;
esac
# redis-cli 7 asks COMMAND DOCS in interactive mode; it must parse.
cli COMMAND DOCS get | head -n 1 | grep -q '^get$' || fail "COMMAND DOCS"

# nc: inline commands with quoting; QUIT closes the connection.
got=$(printf '%s\r\n' 'PING' 'ECHO "a b\tc\x41"' "ECHO 'it\\'s'" \
    "ECHO 'single \"quoted\"'" 'INSERT artists name "Nina \"the\" Simone"' \
    'QUIT' | timeout 10 nc 127.0.0.1 "$port" | tr -d '\r')
want=$(printf '+PONG\n$6\na b\tcA\n$4\nit'"'"'s\n$15\nsingle "quoted"\n:2\n+OK')
expect "nc inline" "$want" "$got"
got=$(printf 'ECHO "unbalanced\r\n' | timeout 10 nc 127.0.0.1 "$port" | tr -d '\r')
expect "nc unbalanced" "-ERR Protocol error: unbalanced quotes in request" "$got"
expect "GET quoted" "Nina \"the\" Simone" "$(cli GET artists 2 | sed -n 4p)"

# redis-benchmark: connects, asks CONFIG GET save/appendonly, runs PING
# inline and RESP, with and without pipelining; no error may show up.
for pipe in 1 16; do
    out=$(redis-benchmark -p "$port" -t ping -n 2000 -c 10 -P "$pipe" -q 2>&1)
    echo "$out" | tr '\r' '\n' | grep -E 'requests per second' |
        sed 's/^/  /'
    if echo "$out" | grep -qiE 'error|warning'; then
        fail "redis-benchmark -P $pipe: $out"
    fi
    echo "$out" | grep -q 'PING_MBULK: .*requests per second' ||
        fail "redis-benchmark -P $pipe did not finish: $out"
done

# Protected mode: a second server on all addresses, no password; a client
# from a non-loopback address of this host is refused with a message that
# says how to set a password. Skipped when the host has no such address.
ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' |
    grep -v '^127\.' | head -n 1 || true)
if [ -n "$ip" ]; then
    "$server" --port 0 --bind 0.0.0.0 --dir "" >"$tmp/open.log" 2>&1 &
    open_pid=$!
    open_port=
    i=0
    while [ $i -lt 200 ] && [ -z "$open_port" ]; do
        open_port=$(sed -n 's/.*Ready to accept connections tcp on .*:\([0-9]*\)$/\1/p' \
            "$tmp/open.log" | head -n 1)
        i=$((i + 1))
        [ -n "$open_port" ] || sleep 0.05
    done
    # nc sends nothing: input left unread when the server closes would turn
    # its close into a reset that can drop the message in flight.
    got=$(timeout 10 nc "$ip" "$open_port" </dev/null | tr -d '\r')
    case "$got" in
    "-DENIED fermata is running in protected mode"*requirepass*) echo "ok: protected mode" ;;
    *) fail "protected mode: got [$got]" ;;
    esac
    expect "loopback allowed in protected mode" "PONG" \
        "$(redis-cli -p "$open_port" PING)"
    kill -TERM "$open_pid"
    wait "$open_pid" || fail "second server exit status"
else
    echo "skip: protected mode (no non-loopback IPv4 address)"
fi

# SIGTERM: clean shutdown, exit status 0.
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do
    i=$((i + 1))
    sleep 0.05
done
wait "$pid"
expect "exit status after SIGTERM" 0 $?
pid=
grep -q 'Received SIGTERM' "$tmp/server.log" || fail "no SIGTERM log line"
grep -q 'ready to exit' "$tmp/server.log" || fail "no exit log line"

if [ "$failures" -ne 0 ]; then
    echo "--- server log"
    cat "$tmp/server.log"
    echo "$failures failure(s)"
    exit 1
fi
echo "all ok"
