# shellcheck shell=sh
# The root filesystem becomes read-only; /tmp, /run, /dev/shm stay writable. The app never
# runs on a writable root: when that fails, the machine powers off instead.
read_only_root() {
    mount -o remount,ro / || fatal "cannot make the root filesystem read-only: not starting the app"
}

# The app's directory is writable, in RAM: apps that write where they are started (HSQLDB's
# database "test", a relative data directory) run as they do on a developer's machine. An
# overlay keeps the image's /app as its read-only lower layer and takes the writes on a tmpfs of
# its own (at most half the RAM, tmpfs's default; only what is written uses memory). chown
# copies up only the directory itself: the image's files keep their owner (root). When the
# overlay cannot be mounted (a kernel without overlayfs), the app starts on the read-only /app.
app_rw=/run/imagebuilder/app-rw
app_overlay() {
    # shellcheck disable=SC2174  # /run/imagebuilder is there already (config.sh)
    mkdir -p -m 0700 "$app_rw" &&
        mount -t tmpfs -o nosuid,nodev,mode=0700 tmpfs "$app_rw" &&
        mkdir "$app_rw/upper" "$app_rw/work" || return 1
    if ! mount -t overlay -o "nosuid,nodev,lowerdir=/app,upperdir=$app_rw/upper,workdir=$app_rw/work" \
            overlay /app; then
        umount "$app_rw"
        return 1
    fi
    chown {{ app_user }}:{{ app_user }} /app
}
writable_app() {
    if why=$(app_overlay 2>&1); then
        say "/app is writable, in RAM: its writes vanish at power-off"
    else
        say "/app stays read-only (the app cannot write its working directory): no RAM overlay on it: $(echo "$why" | awk '{ printf "%s%s", sep, $0; sep = "; " }')"
    fi
}
