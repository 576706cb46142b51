# imagebuilder's app output filter (templates/jdkhint.awk), run by /init between the app and the
# console:
#     awk -v map=/etc/imagebuilder/jdk-missing -f jdkhint.awk
# Passes every line through. When a line says the app could not load a JDK class
# (NoClassDefFoundError, ClassNotFoundException) of a module the image leaves out, it adds a line
# naming that module and the keys that add it, once per module. The map, written by the build
# into the jvm layer, lists "package module" for every JDK module not linked.
#
# With -v aot=PATH (the image holds AOT class data from a training run; app.conf passes it to the
# JVM with its class-data-sharing log at info level), that log's info lines stay off the console:
# at the app's first line of its own (or the end of its output) one line says whether the JVM
# mapped the archive, or the reason it gave for not using it. Its warnings pass through.
function aot_verdict() {
    aot_told = 1
    if (aot_used && aot_why == "")
        printf "imagebuilder: AOT class data %s in use\n", aot
    else
        printf "imagebuilder: the JVM rejected the AOT class data %s (%s): the app runs without it and starts slower; rebuild the image\n", aot, (aot_why == "" ? "it logged no reason" : aot_why)
    fflush()
}
BEGIN {
    while ((getline line < map) > 0) {
        split(line, f, " ")
        module[f[1]] = f[2]
    }
}
aot != "" && /^\[[0-9.]+s\]\[[a-z]+ *\]\[(cds|aot)[a-z,]* *\] / {
    msg = $0
    sub(/^\[[^]]*\]\[[^]]*\]\[[^]]*\] /, "", msg)
    if (!aot_told) {
        if (msg ~ /^Mapped dynamic region #0|^Using AOT-linked classes: true/)
            aot_used = 1
        if (aot_why == "" && ($0 ~ /^\[[0-9.]+s\]\[(warning|error)/ || msg ~ /not found|[Uu]nable to use|[Ff]ailed|[Mm]ismatch|[Dd]isabled/))
            aot_why = msg
    }
    if ($0 ~ /^\[[0-9.]+s\]\[info/)
        next
}
aot != "" && !aot_told && !/^\[[0-9.]+s\]\[[a-z]+ *\]\[(cds|aot)/ { aot_verdict() }
{ print; fflush() }
/NoClassDefFoundError|ClassNotFoundException/ {
    if (match($0, /(NoClassDefFoundError|ClassNotFoundException):? +[A-Za-z0-9_$.\/]+/)) {
        name = substr($0, RSTART, RLENGTH)
        sub(/^[A-Za-z]+:? +/, "", name)
        gsub(/\//, ".", name)
        pkg = name
        sub(/\.[^.]*$/, "", pkg)
        if ((pkg in module) && !(module[pkg] in told)) {
            told[module[pkg]] = 1
            printf "imagebuilder: the app needs the JDK module %s (for %s), which is not in this image: add \"%s\" to [jvm] modules in imagebuilder.toml (or set [jvm] runtime = \"full\") and rebuild\n", module[pkg], name, module[pkg]
            fflush()
        }
    }
}
END { if (aot != "" && !aot_told) aot_verdict() }
