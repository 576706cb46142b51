# shellcheck shell=sh
# imagebuilder disk root, sourced by /init when the root has no app (no
# /etc/imagebuilder/app.conf), once it has sourced its parts (say and fatal from log.sh,
# load_drivers from drivers.sh) and before anything else: a disk boot's boot loader loads only
# the kernel and the base layer, and the root's layers are EROFS partitions of the disk (named
# ib-<the first 32 hex digits of the layer's digest>), listed on the kernel command line lowest
# first as imagebuilder.layers=NAME:HEX,... This mounts each read-only, stacks them with
# overlayfs (lower layers only: the root is read-only by construction), and switches to that
# root, where /init starts again from the top. The initramfs is emptied on the way, so only the
# page cache holds the root's files, and only those read.
layers=""
# shellcheck disable=SC2013  # the command line's words
for arg in $(cat /proc/cmdline); do
    case "$arg" in imagebuilder.layers=*) layers=${arg#*=} ;; esac
done
if [ -z "$layers" ]; then
    # An initramfs root without its top layer: the kernel ran out of memory unpacking it.
    total=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
    fatal "not enough memory: the root filesystem did not fit in this machine's ${total} MiB (it is unpacked into RAM): give the machine more memory ('imagebuilder inspect' shows what the image needs)"
fi
say "root: on disk, layers $layers"
# The disks' drivers (drivers.sh), with erofs and overlay; the init loads the rest later.
# Devices that appear later (a disk a controller is still probing) get theirs while the
# partitions are waited for.
load_drivers erofs overlay
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
# shellcheck disable=SC2086  # split at the commas
set -- $layers
IFS=$saved_ifs
for item in "$@"; do
    name=${item%%:*}
    hex=${item#*:}
    tries=0
    until dev=$(part_of "$hex"); do
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || fatal "layer $name: no partition ib-$hex on any disk (drivers loaded: $(loaded_modules))"
        sleep 0.1
        load_drivers
    done
    mkdir -p "/layers/$name"
    mount -t erofs -o ro "$dev" "/layers/$name" \
        || fatal "layer $name: cannot mount $dev (ib-$hex) as EROFS"
    lower="/layers/$name${lower:+:$lower}"
    shown="$shown $name=${dev#/dev/}"
done
case "$lower" in
    *:*) mount -t overlay -o "ro,lowerdir=$lower" overlay /newroot \
        || fatal "cannot stack the layers with overlayfs ($lower)" ;;
    *) mount -o bind,ro "$lower" /newroot || fatal "cannot mount the root layer $lower" ;;
esac
[ -x /newroot/init ] || fatal "the layers hold no /init"
say "root: EROFS layers$shown mounted and stacked read-only (overlayfs); switching to it"
umount /dev/pts /dev/shm /tmp /run 2>/dev/null
umount -l /sys /proc /dev 2>/dev/null
exec switch_root /newroot /init
