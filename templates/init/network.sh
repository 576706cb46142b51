# shellcheck shell=sh
# The network: bring_up_network brings every card up and waits for their links; a physical link
# takes seconds to negotiate, so it waits for every card's carrier, at most 10 s, and at most
# 6 s more once one card has its link (an emulated e1000e takes over 2 s to come up after
# another card). Then each card gets its static settings, if the environment has some for its
# MAC (or "any": the first card with a link; /run/network.conf, from config.sh), else DHCP, on
# all cards at once. Sets nics (the cards), linked (those that had a link) and how (the static).
carrier() { [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ]; }
wait_for_links() {
    linked=""
    waited=0
    first=""
    while [ -n "$nics" ]; do
        linked=""
        all=1
        for iface in $nics; do
            if carrier "$iface"; then linked="$linked $iface"; else all=""; fi
        done
        [ -n "$all" ] && break
        [ -n "$linked" ] && [ -z "$first" ] && first=$waited
        [ "$waited" -ge 100 ] && break
        [ -n "$first" ] && [ $((waited - first)) -ge 60 ] && break
        sleep 0.1
        waited=$((waited + 1))
    done
    first_card=""
    for iface in $linked $nics; do first_card=$iface; break; done
}
static_for() {
    [ -s /run/network.conf ] || return 1
    mac=$(cat "/sys/class/net/$1/address")
    while read -r entry; do
        case "$entry" in "mac=$mac "*) echo "$entry"; return 0 ;; esac
    done < /run/network.conf
    [ "$1" = "$first_card" ] || return 1
    while read -r entry; do
        case "$entry" in "mac=any "*) echo "$entry"; return 0 ;; esac
    done < /run/network.conf
    return 1
}
set_static() {
    address="" gateway="" dns=""
    for field in $2; do
        case "$field" in
            address=*) address=${field#*=} ;;
            gateway=*) gateway=${field#*=} ;;
            dns=*) dns=${field#*=} ;;
        esac
    done
    ip -4 addr flush dev "$1"
    ip -4 addr add "$address" dev "$1"
    [ -n "$gateway" ] && ip -4 route replace default via "$gateway" dev "$1"
    if [ -n "$dns" ]; then
        for ns in $(echo "$dns" | awk -F, '{ for (i = 1; i <= NF; i++) print $i }'); do
            echo "nameserver $ns"
        done > /run/resolv.conf
    fi
    how="$how $1"
}
bring_up_network() {
    ip link set lo up
    nics=""
    for path in /sys/class/net/*; do
        iface=${path##*/}
        if [ ! -e "$path" ] || [ "$iface" = lo ]; then continue; fi
        nics="$nics $iface"
        ip link set "$iface" up 2>/dev/null
    done
    wait_for_links
    how=""
    dhcp=""
    for iface in $nics; do
        if entry=$(static_for "$iface"); then
            set_static "$iface" "$entry"
        elif carrier "$iface" || case " $linked " in *" $iface "*) true ;; *) false ;; esac; then
            # A card that had its link while we waited gets DHCP even if its link is down again
            # now: e1000e resets its link once after it is brought up, and udhcpc retries.
            # Without -q/-f, udhcpc stays in the background once it has a lease, to renew it.
            udhcpc -i "$iface" -s {{ share }}/udhcpc.script -n -t 5 -T 1 >/dev/null 2>&1 &
            dhcp="$dhcp $!"
        fi
    done
    # shellcheck disable=SC2086  # one word per process id
    [ -n "$dhcp" ] && wait $dhcp
    log_nics
}
# Each card's driver, MAC, link and addresses.
log_nics() {
    for iface in $nics; do
        driver=$(readlink "/sys/class/net/$iface/device/driver")
        link=down
        carrier "$iface" && link=up
        address=$(ip -4 -o addr show dev "$iface" | awk '{ printf "%s%s", sep, $4; sep = " " }')
        case " $how " in *" $iface "*) address="$address (static)" ;; esac
        driver=${driver##*/}
        say "network $iface: driver ${driver:-none}, mac $(cat "/sys/class/net/$iface/address")," \
            "link $link, address ${address:-none}"
    done
}
# Static settings that arrive later (EC2 user-data), applied to the cards already up.
apply_static_network() {
    [ -s /run/network.conf ] || return 0
    for iface in $nics; do
        entry=$(static_for "$iface") && set_static "$iface" "$entry"
    done
    log_nics
}
