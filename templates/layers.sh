# imagebuilder disk root, sourced by /init when the root has no app (no
# /etc/imagebuilder/app.conf), before anything else: a disk boot's
# boot loader loads only the kernel and the base layer, and the root's layers are EROFS
# partitions of the disk (named ib-<the first 32 hex digits of the layer's digest>), listed on
# the kernel command line lowest first as imagebuilder.layers=NAME:HEX,... This mounts each
# read-only, stacks them with overlayfs (lower layers only: the root is read-only by
# construction), and switches to that root, where /init starts again from the top. The
# initramfs is emptied on the way, so only the page cache holds the root's files, and only
# those read.
root_fail() {
    say "FATAL: $*; powering off"
    sync
    poweroff -f
    while :; do sleep 3600; done
}
layers=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in imagebuilder.layers=*) layers=${arg#*=} ;; esac
done
if [ -z "$layers" ]; then
    # An initramfs root without its top layer: the kernel ran out of memory unpacking it.
    total=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
    root_fail "not enough memory: the root filesystem did not fit in this machine's ${total} MiB (it is unpacked into RAM): give the machine more memory ('imagebuilder inspect' shows what the image needs)"
fi
say "root: on disk, layers $layers"
# The disks' drivers: each device's modalias names its driver (the init loads the rest later);
# SCSI hosts scan their disks before their driver's modprobe returns (/etc/modprobe.d). Devices
# that appear later (a disk a controller is still probing) get theirs while the partitions are
# waited for.
seen=""
load_drivers() {
    round=0
    while [ "$round" -lt 20 ]; do
        round=$((round + 1))
        new=""
        for f in /sys/bus/*/devices/*/modalias; do
            [ -r "$f" ] || continue
            read -r alias < "$f" 2>/dev/null || continue
            case " $seen " in *" $alias "*) continue ;; esac
            seen="$seen $alias"
            new="$new $alias"
        done
        [ -n "$new" ] || break
        set -f  # one word per alias, never a file name pattern; one modprobe per round
        modprobe -q -b -a $new 2>/dev/null
        set +f
    done
}
load_drivers
modprobe -q -a erofs overlay 2>/dev/null
# The partition of each layer: the disks' partitions name themselves in uevent (PARTNAME);
# a controller may still be probing its disks, so look again for up to 10 s.
part_of() {
    for ev in /sys/class/block/*/uevent; do
        name="" dev=""
        while IFS='=' read -r key value; do
            case "$key" in PARTNAME) name=$value ;; DEVNAME) dev=$value ;; esac
        done < "$ev"
        [ "$name" = "ib-$1" ] && [ -b "/dev/$dev" ] && { echo "/dev/$dev"; return 0; }
    done
    return 1
}
mkdir -p /layers /newroot
lower=""
shown=""
saved_ifs=$IFS
IFS=,
set -- $layers
IFS=$saved_ifs
for item in "$@"; do
    name=${item%%:*}
    hex=${item#*:}
    tries=0
    until dev=$(part_of "$hex"); do
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || root_fail "layer $name: no partition ib-$hex on any disk (drivers loaded: $(awk '{ printf "%s%s", sep, $1; sep = " " }' /proc/modules))"
        sleep 0.1
        load_drivers
    done
    mkdir -p "/layers/$name"
    mount -t erofs -o ro "$dev" "/layers/$name" \
        || root_fail "layer $name: cannot mount $dev (ib-$hex) as EROFS"
    lower="/layers/$name${lower:+:$lower}"
    shown="$shown $name=${dev#/dev/}"
done
case "$lower" in
    *:*) mount -t overlay -o "ro,lowerdir=$lower" overlay /newroot \
        || root_fail "cannot stack the layers with overlayfs ($lower)" ;;
    *) mount -o bind,ro "$lower" /newroot || root_fail "cannot mount the root layer $lower" ;;
esac
[ -x /newroot/init ] || root_fail "the layers hold no /init"
say "root: EROFS layers$shown mounted and stacked read-only (overlayfs); switching to it"
umount /dev/pts /dev/shm /tmp /run 2>/dev/null
umount -l /sys /proc /dev 2>/dev/null
exec switch_root /newroot /init
