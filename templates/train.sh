# imagebuilder's AOT training run (templates/train.sh), run by /bin/sh of the image's own root,
# chrooted, as PID 1 of private user, mount, network and PID namespaces (imagebuilder/aot.py):
#     sh /.imagebuilder/train.sh TIMEOUT URL SECONDS LOG -- env -i VAR=... java ...
# Brings lo up (the only network there is), starts the app with its output in LOG, then waits
# until URL answers 2xx (or, with no URL, SECONDS have passed), at most TIMEOUT seconds, and
# stops the app with SIGTERM so the JVM writes its archive as it exits. Prints one line:
# "ready CS", then "stopped STATUS CS"; or "exited STATUS CS" (the app ended by itself) or
# "timeout CS", CS being centiseconds since the start.
set -u
timeout=$1 url=$2 seconds=$3 log=$4
shift 5
now() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
busybox ip link set lo up
cd /app 2>/dev/null || cd /
"$@" > "$log" 2>&1 &
pid=$!
start=$(now)
ready=""
while :; do
    # Gone (reaped by this shell) or a zombie: the app has ended.
    state=Z
    read -r _ _ state _ 2>/dev/null < "/proc/$pid/stat"
    [ "$state" = Z ] && break
    if [ -n "$url" ]; then
        # (busybox timeout, not wget -T: that crashes the wget of busybox 1.35, bookworm's)
        busybox timeout 5 busybox wget -q -O /dev/null "$url" 2>/dev/null && ready=1 && break
    elif [ $(($(now) - start)) -ge $((seconds * 100)) ]; then
        ready=1
        break
    fi
    [ $(($(now) - start)) -ge $((timeout * 100)) ] && break
    sleep 0.2
done
if [ -z "$ready" ]; then
    if [ "$state" = Z ]; then
        wait "$pid"
        echo "exited $? $(($(now) - start))"
    else
        echo "timeout $(($(now) - start))"
    fi
    exit 0
fi
echo "ready $(($(now) - start))"
kill -TERM "$pid"
wait "$pid"
echo "stopped $? $(($(now) - start))"
