#!/bin/sh
# Build examples/hello/hello.jar from src/ with the host's JDK (17 or newer).
# The jar is deterministic: classes in sorted order, every timestamp fixed by --date.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
javac --release 17 -encoding UTF-8 -d "$tmp/classes" src/hello/*.java
# List the class files ourselves, sorted: "-C classes ." would follow directory order.
files=$(cd "$tmp/classes" && find . -type f -name '*.class' | LC_ALL=C sort)
set --
for f in $files; do
    set -- "$@" -C "$tmp/classes" "$f"
done
jar --create --file "$tmp/hello.jar" --date=1980-01-01T00:00:02Z --main-class hello.Main "$@"
mv -f "$tmp/hello.jar" hello.jar
echo "built $(pwd)/hello.jar"
