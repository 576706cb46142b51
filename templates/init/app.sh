# shellcheck shell=sh
# The app: its output filter, its start as the unprivileged user, its stop (SIGTERM from the
# power button or the init's own signals, SIGKILL {{ stop_timeout }} s later) and its end.
app_pid=""
stopping=""
stop_app() {
    [ -n "$stopping" ] && return
    stopping=1
    say "stopping the app"
    [ -n "$app_pid" ] && kill -TERM "$app_pid" 2>/dev/null
    (sleep {{ stop_timeout }}; say "the app did not stop in {{ stop_timeout }} s: killing it"; kill -KILL "$app_pid" 2>/dev/null) &
}

# Shut down cleanly when the ACPI power button is pressed (QEMU system_powerdown): any event
# from the "Power Button" input device makes PID 1 stop the app.
watch_power_button() {
    for dev in /sys/class/input/event*; do
        [ -r "$dev/device/name" ] || continue
        case "$(cat "$dev/device/name")" in
            "Power Button") (head -c 24 "/dev/input/${dev##*/}" >/dev/null && kill -USR1 1) & ;;
        esac
    done
}

# The app's output reaches the console through jdkhint.awk, which names the JDK module (and the
# key that adds it) when the app dies of a JDK class left out of the image, and the screen
# through tee. Sets app_out (where the app writes) and filter_pid.
hint() {
    if [ -f {{ share }}/jdkhint.awk ]; then
        awk -v map=/etc/imagebuilder/jdk-missing -v aot="${AOT_ARCHIVE:-}" \
            -f {{ share }}/jdkhint.awk
    else
        cat
    fi
}
start_filter() {
    app_out=/dev/console
    filter_pid=""
    if mkfifo -m 0600 /run/imagebuilder/app.out; then
        app_out=/run/imagebuilder/app.out
        hint < "$app_out" | to_screen &
        filter_pid=$!
    fi
}

# The app ("$2"...), with the JVM options $1, in /app, as the app user, with exactly the
# environment of app.env; sets app_pid. (cd, not start-stop-daemon -d: busybox before 1.36 has
# no -d.) `env -i` takes the lines of app.env as its first arguments, then the command.
start_app() {
    (
        cd /app || exit 1
        flags=$1 program=$2
        shift 2
        # (Word splitting, on purpose: the flags are fixed words without pattern characters.)
        # shellcheck disable=SC2086
        set -- /usr/bin/setpriv --nnp /usr/bin/start-stop-daemon -S -c {{ app_user }}:{{ app_user }} \
            -x "$program" -- $flags "$@"
        # Each line of app.env becomes one word, in one pass: split at newlines only, never
        # globbed (appending the lines one by one with set -- costs time quadratic in their
        # number).
        set -f
        IFS='
'
        # shellcheck disable=SC2046,SC2154  # app_env: config.sh
        exec env -i $(cat "$app_env") "$@"
    ) > "$app_out" 2>&1 &
    app_pid=$!
}

# Waits for the app to end (a signal to the init interrupts wait: wait again) and for its
# output to pass through the filter, and says how it ended.
wait_app() {
    while :; do
        wait "$app_pid"
        status=$?
        kill -0 "$app_pid" 2>/dev/null || break
    done
    if [ -n "$filter_pid" ]; then
        # The filter ends when the app's output does; a child the app left holding it gets 2 s.
        (sleep 2; kill "$filter_pid" 2>/dev/null) &
        wait "$filter_pid"
    fi
    say "app exited with status $status"
}
