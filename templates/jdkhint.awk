# imagebuilder's app output filter (templates/jdkhint.awk), run by /init between the app and the
# console:
#     awk -v map=/etc/imagebuilder/jdk-missing -f jdkhint.awk
# Passes every line through. When a line says the app could not load a JDK class
# (NoClassDefFoundError, ClassNotFoundException) of a module the image leaves out, it adds a line
# naming that module and the keys that add it, once per module. The map, written by the build
# into the jvm layer, lists "package module" for every JDK module not linked.
BEGIN {
    while ((getline line < map) > 0) {
        split(line, f, " ")
        module[f[1]] = f[2]
    }
}
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
