# Shared by the bench scripts (sourced from the repository's root): Switchboard's settings for
# a run, and waiting until a freshly started server listens.

# load_sb_env: SB_ENV holds bench/switchboard.env's settings (blank and comment lines left out).
load_sb_env() {
    SB_ENV=()
    local line
    while IFS= read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        SB_ENV+=("$line")
    done < bench/switchboard.env
}

# await_listening NAME LOG [TENTHS]: waits until the server started as SERVER_PID has logged
# `listening on` and 127.0.0.1:$PORT takes a connection; at most TENTHS tenths of a second
# (100). Fails, with the server's log, if it exits first or never listens.
await_listening() {
    local name=$1 log=$2 tenths=${3:-100}
    for _ in $(seq "$tenths"); do
        if grep -q "listening on" "$log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
        sleep 0.1
    done
    echo "$name did not start" >&2
    cat "$log" >&2
    return 1
}
