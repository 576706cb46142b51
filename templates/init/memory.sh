# shellcheck shell=sh
# Memory: the app (a JVM) needs some to start; a machine short of it says so here rather than
# through the JVM's failure. Once the app listens on its port, the memory in use is logged.
meminfo() { awk '/^MemTotal:/ { t = $2 } /^MemAvailable:/ { a = $2 }
    END { printf "MemTotal %d MiB, MemAvailable %d MiB, in use %d MiB", t / 1024, a / 1024, (t - a) / 1024 }' /proc/meminfo; }
app_floor={{ app_floor }}  # MiB: imagebuilder.layers.base.APP_FLOOR_MIB
check_memory() {
    available=$(awk '/^MemAvailable:/ { printf "%d", $2 / 1024 }' /proc/meminfo 2>/dev/null)
    [ -n "$available" ] || return 0
    say "memory: $(meminfo)"
    [ "$available" -ge "$app_floor" ] || fatal "not enough memory: $available MiB available," \
        "the app needs at least $app_floor MiB to start: give the machine more memory"
}

# In the background: once the app (process $2) listens on port $1, the memory in use.
log_memory_when_listening() {
    (
        n=0
        while [ "$n" -lt 1200 ] && kill -0 "$2" 2>/dev/null; do
            if printf '' | nc -w 1 127.0.0.1 "$1" 2>/dev/null; then
                say "memory with the app listening on port $1: $(meminfo)"
                break
            fi
            sleep 0.5
            n=$((n + 1))
        done
    ) &
}
