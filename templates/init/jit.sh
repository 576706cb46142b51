# shellcheck shell=sh
# `imagebuilder run --jit c1` asks for C1 only: under emulation, C2's compilations cost more
# time at start-up than they give back in a short local run. The image is unchanged. C1's
# frames are larger than C2's (several times when C2 inlines a chain of calls), so a deep
# recursion that C2 runs could overflow the default 1 MiB stack: unless the app sets its own
# (-Xss, -XX:ThreadStackSize), the JVM gets 16 MiB stacks (the launcher runs main() in a thread
# of -Xss's size; -XX:ThreadStackSize alone it ignores there).

# Whether the app's environment or its command (java's arguments) sets the thread stack size.
jvm_sets_stack() {
    # shellcheck disable=SC2154  # app_env: config.sh
    awk '/^(JAVA_TOOL_OPTIONS|JDK_JAVA_OPTIONS|_JAVA_OPTIONS)=.*(-Xss|-XX:ThreadStackSize=)/ {
        found = 1 } END { exit !found }' "$app_env" && return 0
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            -Xss* | -XX:ThreadStackSize=*) return 0 ;;
            @*) awk '/-Xss|-XX:ThreadStackSize=/ { found = 1 } END { exit !found }' \
                    "/app/${1#@}" 2>/dev/null && return 0 ;;
            -cp | -classpath | --class-path | -p | --module-path | --upgrade-module-path | \
                --add-modules | --add-reads | --add-exports | --add-opens | --limit-modules | \
                --patch-module | --source | --enable-native-access) shift ;;
            -jar | -m | --module | [!-]*) return 1 ;;
        esac
        [ $# -gt 0 ] && shift
    done
    return 1
}

# The JVM options this run adds to the app's command ("$@"), on standard output; the console
# line that says so goes to standard error.
c1_flags() {
    case " $(cat /proc/cmdline) " in *" imagebuilder.jit=c1 "*) ;; *) return 0 ;; esac
    [ "${1##*/}" = java ] || return 0
    flags="-XX:TieredStopAtLevel=1"
    stack="its own thread stack size"
    if ! jvm_sets_stack "$@"; then
        flags="$flags -Xss16m"
        stack="16 MiB thread stacks (-Xss16m: C1's frames are larger than C2's)"
    fi
    say "imagebuilder.jit=c1: the JVM compiles with C1 only (-XX:TieredStopAtLevel=1), with" \
        "$stack, in this run" >&2
    echo "$flags"
}
