# shellcheck shell=sh
# Drivers for the devices actually present, for /init and for layers.sh (a disk boot's disks).
# Each device's modalias names its driver through modules.alias. A driver can reveal devices
# that need another (a RAID controller's disks, a virtio, Xen or VMBus bus), so load_drivers
# goes round until a round finds no new device. SCSI hosts scan their disks before their
# driver's modprobe returns (scan=sync, /etc/modprobe.d), so the disks are there for the next
# round. One modprobe per round takes all of the round's aliases (-a): a process start and a
# read of modules.alias cost tens of milliseconds each under emulation, so the modules named as
# arguments go with the first round. `seen` keeps the aliases already handled across calls:
# layers.sh calls again for devices that appear while it waits for its partitions.
seen=""
load_drivers() {
    pending="$*"
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
        # One word per alias (a modalias has no blanks), never a file name pattern.
        set -f
        # shellcheck disable=SC2086
        modprobe -q -b -a $pending $new 2>/dev/null
        set +f
        pending=""
    done
    # shellcheck disable=SC2086
    [ -z "$pending" ] || modprobe -q -a $pending 2>/dev/null
}

# NVMe controllers list their namespaces (the disks) shortly after the driver binds: up to 5 s.
wait_for_nvme() {
    for ctrl in /sys/class/nvme/nvme*; do
        [ -e "$ctrl" ] || continue
        n=0
        while [ "$n" -lt 50 ]; do
            for ns in "$ctrl"/nvme*n*; do [ -e "$ns" ] && n=50; done
            [ "$n" -lt 50 ] && sleep 0.1
            n=$((n + 1))
        done
    done
}

# With no network card at all: the network controllers left without a driver, by PCI id, and
# the key that adds one.
name_cards_without_driver() {
    orphans=""
    for dev in /sys/bus/pci/devices/*; do
        if [ -e "$dev/driver" ] || [ ! -r "$dev/class" ]; then continue; fi
        case "$(cat "$dev/class")" in 0x02*) ;; *) continue ;; esac
        orphans="$orphans ${dev##*/} [$(cat "$dev/vendor" "$dev/device" | awk '{ sub("^0x", ""); printf "%s%s", sep, $0; sep = ":" }')]"
    done
    say "no network card has a driver: ${orphans:+PCI network controllers without one:$orphans; }add" \
        "its module to [system] modules (or hardware = [\"virtual\", \"metal\"]) in imagebuilder.toml"
}
