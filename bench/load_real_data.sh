#!/bin/sh
# load_real_data.sh: the real music data set (../shared/data, see its
# README.md) loaded into fermata-server with fermata-load.
#
#   bench/load_real_data.sh [BUILD_DIR]      (default: build-rel)
#
# 1. Builds one CSV file per table with awk from the TidyTuesday Spotify
#    songs and the HetRec 2011 Last.fm files, every row with an explicit id
#    so that the references between files line up:
#      genres              the 6 playlist_genre values
#      albums              one per track_album_id; year = first 4 chars of
#                          track_album_release_date
#      artists             the distinct track_artist strings, then the
#                          HetRec artist names that match none of them
#                          (ASCII case-insensitively)
#      tracks              one per track_id (its first occurrence), song_url
#                          https://open.spotify.com/track/<id>
#      users               the HetRec userIDs (as ids), with a synthetic
#                          username, email, password_digest, session_token
#      user_followers      user_friends.dat as it is
#      playlists           the 471 playlist_ids, owned by HetRec users in
#                          turn
#      playlist_tracks     the 32,833 (playlist, track) rows, duplicates too
#      user_track_history  the README's artist-name bridge: each HetRec
#                          (user, artist, weight) whose artist name matches
#                          a Spotify track_artist is split over that
#                          artist's 10 most popular tracks, Zipf-like
#                          (rank r gets 1/r of the weight, normalised);
#                          shares that round to 0 are dropped, so
#                          listen_count > 0, and (user_id, track_id) pairs
#                          are summed, so they are unique
#    HetRec files have CRLF line ends (stripped); the ISO-8859-1 tags file
#    is not used.
# 2. Starts fermata-server on a free port (port 0, read back from its log)
#    with a temporary --dir, loads the files in foreign-key order and prints
#    rows/s per table, then DBSIZE and INFO keyspace.
# 3. SHUTDOWN (snapshot), then fermata-check --deep on the directory.
#
# Exits 0 with a message when ../shared/data is absent; 1 when a load or
# the check fails. Needs awk, gzip and redis-cli or nc.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
data=$repo/../shared/data
build=${1:-$repo/build-rel}
case $build in /*) ;; *) build=$(pwd)/$build ;; esac

if [ ! -f "$data/tidytuesday_spotify_songs.csv.gz" ]; then
    echo "skip: no real data set in $data"
    exit 0
fi
server=$build/server/fermata-server
load=$build/server/fermata-load
check=$build/server/fermata-check
for bin in "$server" "$load" "$check"; do
    [ -x "$bin" ] || { echo "missing $bin (build first)" >&2; exit 1; }
done

tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
csv=$tmp/csv
mkdir -p "$csv"

# --- 1. CSV files ---------------------------------------------------------

t0=$(date +%s)
gzip -dc "$data/tidytuesday_spotify_songs.csv.gz" >"$tmp/spotify.csv"
for f in user_artists user_friends artists; do
    gzip -dc "$data/hetrec2011_lastfm2k_$f.dat.gz" | tr -d '\r' |
        tail -n +2 >"$tmp/$f.tsv"
done

# Users: every userID of user_artists and user_friends, ascending.
{
    cut -f1 "$tmp/user_artists.tsv"
    cut -f1,2 "$tmp/user_friends.tsv" | tr '\t' '\n'
} | sort -n -u >"$tmp/user_ids"

awk 'BEGIN {
    srand(42)
    print "id,username,email,password_digest,session_token"
}
function hex(n,    s, i) {
    s = ""
    for (i = 0; i < n; i++)
        s = s sprintf("%x", int(rand() * 16))
    return s
}
{
    printf "%d,user%d,user%d@example.com,sha256$%s,%s\n", $1, $1, $1, \
        hex(64), hex(32)
}' "$tmp/user_ids" >"$csv/users.csv"

printf 'user_id,follower_id\n' >"$csv/user_followers.csv"
tr '\t' ',' <"$tmp/user_friends.tsv" >>"$csv/user_followers.csv"

# The Spotify file: genres, albums, artists, tracks, playlists,
# playlist_tracks, and a side file for the history bridge:
# lower-case artist, track id, popularity.
awk -v out="$csv" -v side="$tmp/track_artists.tsv" '
function q(s) {
    gsub(/"/, "\"\"", s)
    return "\"" s "\""
}
# Splits one RFC 4180 line into f[1..n]; a line with no quote is split
# by split(), the others byte by byte.
function parse(s,    n, i, c, len, field, inq) {
    if (index(s, "\"") == 0)
        return split(s, f, ",")
    n = 0; field = ""; inq = 0; len = length(s)
    for (i = 1; i <= len; i++) {
        c = substr(s, i, 1)
        if (inq) {
            if (c != "\"")
                field = field c
            else if (substr(s, i + 1, 1) == "\"") {
                field = field "\""; i++
            } else
                inq = 0
        } else if (c == "\"")
            inq = 1
        else if (c == ",") {
            f[++n] = field; field = ""
        } else
            field = field c
    }
    f[++n] = field
    return n
}
FILENAME == ARGV[1] { users[n_users++] = $1; next }
FNR == 1 {
    print "id,name" >(out "/genres.csv")
    print "id,title,year" >(out "/albums.csv")
    print "id,name" >(out "/artists.csv")
    print "id,title,song_url,album_id,popularity,genre_id" >(out "/tracks.csv")
    print "id,title,user_id" >(out "/playlists.csv")
    print "playlist_id,track_id" >(out "/playlist_tracks.csv")
    next
}
{
    # A record with a newline inside quotes continues on the next line.
    line = $0
    while (gsub(/"/, "\"", line) % 2 == 1 && (getline more) > 0)
        line = line "\n" more
    if (parse(line) != 23) {
        print "bad Spotify record near line " FNR >"/dev/stderr"
        exit 1
    }
    tid = f[1]; title = f[2]; artist = f[3]; pop = f[4]
    alb = f[5]; alb_name = f[6]; date = f[7]
    pl_name = f[8]; pl = f[9]; genre = f[10]
    if (!(genre in genre_id)) {
        genre_id[genre] = ++n_genres
        print n_genres "," q(genre) >(out "/genres.csv")
    }
    if (!(alb in album_id)) {
        album_id[alb] = ++n_albums
        year = substr(date, 1, 4)
        print n_albums "," q(alb_name) "," (year ~ /^[0-9]+$/ ? year + 0 : "") \
            >(out "/albums.csv")
    }
    if (!(artist in artist_seen)) {
        artist_seen[artist] = 1
        print ++n_artists "," q(artist) >(out "/artists.csv")
    }
    if (!(tid in track_id)) {
        track_id[tid] = ++n_tracks
        print n_tracks "," q(title) ",https://open.spotify.com/track/" tid \
            "," album_id[alb] "," pop "," genre_id[genre] >(out "/tracks.csv")
        print tolower(artist) "\t" n_tracks "\t" pop >side
    }
    if (!(pl in playlist_id)) {
        playlist_id[pl] = ++n_playlists
        owner = users[(n_playlists * 7919) % n_users]
        print n_playlists "," q(pl_name) "," owner >(out "/playlists.csv")
    }
    print playlist_id[pl] "," track_id[tid] >(out "/playlist_tracks.csv")
}
END { print n_artists >(out "/.n_artists") }
' "$tmp/user_ids" "$tmp/spotify.csv"

# HetRec: artists not already in Spotify's list, and the listening history
# through the artist-name bridge.
awk -F '\t' -v out="$csv" -v n_artists="$(cat "$csv/.n_artists")" '
function q(s) {
    gsub(/"/, "\"\"", s)
    return "\"" s "\""
}
FILENAME == ARGV[1] {
    # Keep the 10 most popular tracks of each artist name, best first.
    a = $1; k = n_top[a] + 0
    if (k < 10) n_top[a] = ++k
    else if ($3 + 0 <= top_pop[a, 10]) next
    while (k > 1 && top_pop[a, k - 1] < $3 + 0) {
        top_pop[a, k] = top_pop[a, k - 1]; top_id[a, k] = top_id[a, k - 1]
        k--
    }
    top_pop[a, k] = $3 + 0; top_id[a, k] = $2
    next
}
FILENAME == ARGV[2] {
    name = tolower($2); hetrec_name[$1] = name
    if (!(name in n_top) && !(name in added)) {
        added[name] = 1
        print ++n_artists "," q($2) >>(out "/artists.csv")
    }
    next
}
{
    name = hetrec_name[$2]
    if (name == "" || !(name in n_top)) next
    n = n_top[name]; norm = 0
    for (r = 1; r <= n; r++) norm += 1 / r
    for (r = 1; r <= n; r++) {
        c = int($3 * (1 / r) / norm + 0.5)
        if (c > 0) hist[$1 "," top_id[name, r]] += c
    }
}
END {
    print "user_id,track_id,listen_count" >(out "/user_track_history.csv")
    for (k in hist) print k "," hist[k] >(out "/user_track_history.csv")
}
' "$tmp/track_artists.tsv" "$tmp/artists.tsv" "$tmp/user_artists.tsv"
rm -f "$csv/.n_artists"
echo "built the CSV files in $(($(date +%s) - t0)) s:"
for f in "$csv"/*.csv; do
    printf '  %-24s %8d rows\n' "$(basename "$f")" $(($(wc -l <"$f") - 1))
done

# --- 2. Server and load ---------------------------------------------------

"$server" --port 0 --dir "$tmp/data" >"$tmp/server.log" 2>&1 &
pid=$!
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
    echo "FAIL: the server did not start" >&2
    exit 1
fi
echo "fermata-server on port $port, data in $tmp/data"

# A command to the server: redis-cli if there is one, else inline over nc.
cmd() {
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -p "$port" "$@"
    else
        printf '%s\r\nQUIT\r\n' "$*" | nc 127.0.0.1 "$port"
    fi
}

printf '\n%-20s %9s %9s %12s\n' table rows seconds rows/s
total_rows=0
for table in genres albums artists tracks users user_followers playlists \
    playlist_tracks user_track_history; do
    if ! "$load" --port "$port" --table "$table" --quiet \
        "$csv/$table.csv" >"$tmp/load.out" 2>"$tmp/load.err"; then
        cat "$tmp/load.err" "$tmp/load.out" >&2
        echo "FAIL: loading $table" >&2
        exit 1
    fi
    # "fermata-load: T: N rows ok, 0 failed, S s, R rows/s"
    awk -v t="$table" '{ printf "%-20s %9d %9.3f %12d\n", t, $3, $8, $10 }' \
        "$tmp/load.out"
    cat "$tmp/load.out" >>"$tmp/all.out"
done
awk '{ rows += $3; secs += $8 }
END { printf "%-20s %9d %9.3f %12d\n", "all", rows, secs, rows / secs }' \
    "$tmp/all.out"
echo
echo "DBSIZE: $(cmd DBSIZE)"
cmd INFO keyspace

# --- 3. Shutdown and offline check ----------------------------------------

cmd SHUTDOWN >/dev/null 2>&1 || true
wait "$pid" || { echo "FAIL: the server exited with an error" >&2; exit 1; }
pid=
echo
"$check" --deep "$tmp/data"
