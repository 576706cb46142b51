# shellcheck shell=sh
# The init's console lines and its one way to stop on a fault; sourced by /init first.
# The screen: the kernel writes to every console= (tty0, then ttyS0), but /dev/console is only
# the last one (the serial port, which `run` and cloud consoles read), so the init copies its
# own lines and the app's output to tty0 (VGA text or the firmware's framebuffer) as well.
screen=""
[ -c /dev/tty0 ] && printf '' 2>/dev/null > /dev/tty0 && screen=/dev/tty0

say() {
    read -r up _ < /proc/uptime
    echo "imagebuilder: [$up] $*"
    if [ -n "$screen" ]; then echo "imagebuilder: [$up] $*" 2>/dev/null > "$screen"; fi
}

# Boot phases, one stable line each ("imagebuilder: [UPTIME] phase NAME"), which `run --wait`
# reads from the console: kernel (the init starts), drivers, network, environment, app (exec).
phase() { say "phase $1"; }

# Standard input copied to the screen too, if there is one (the app's output).
to_screen() { if [ -n "$screen" ]; then tee "$screen" 2>/dev/null; else cat; fi; }

# A fault the machine cannot run past: one FATAL line saying what is wrong and what to do, then
# power off. It never returns: the app never starts on a machine in that state.
fatal() {
    say "FATAL: $*; powering off"
    sync
    poweroff -f
    while :; do sleep 3600; done
}

# The kernel modules loaded, on one line.
loaded_modules() { awk '{ printf "%s%s", sep, $1; sep = " " }' /proc/modules; }
