# imagebuilder's environment filter (templates/env.awk), run by /init on the environment
# config (config drive, initrd layer or EC2 user-data):
#     awk -v out=FILE -f env.awk CONFIG
# Appends to FILE the lines the app can get through `env -i`: NAME=VALUE with NAME a shell
# variable name, each at most {{ var_max }} bytes and {{ total_max }} in all (the kernel's
# limits, with room to spare: imagebuilder/config/envlimits.py). Prints one message per line it skips,
# naming the line by number only: a line may hold a secret. Blank lines and # comments are
# ignored. A trailing CR (user-data written on Windows) is dropped.
function skip(why) {
    printf "environment line %d skipped: %s\n", NR, why
}
{ sub(/\r$/, "") }
/^[ \t]*(#|$)/ { next }
!/^[A-Za-z_][A-Za-z0-9_]*=/ { skip("not NAME=VALUE with NAME a shell variable name"); next }
length($0) > {{ var_max }} { skip("longer than {{ var_max }} bytes"); next }
total + length($0) + 1 > {{ total_max }} {
    skip("the environment would exceed {{ total_max }} bytes")
    next
}
{ total += length($0) + 1; print >> out }
