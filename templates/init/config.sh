# shellcheck shell=sh
# The environment config and the app's environment. The config is a config drive (ISO 9660,
# volume IMAGEBUILDER) on any disk, or on a partition (flash --env adds one after the image's),
# else an initrd layer (serve --env), else, once the network is up, EC2 user-data. Nothing read
# from it is evaluated or assigned by this shell.

# Sets config (the file, or "") and disk (the config drive's device, or "").
find_config() {
    mkdir -p /run/config
    config=""
    for disk in /dev/vd? /dev/sr? /dev/xvd? /dev/nvme?n? /dev/sd? \
            /dev/vd?[0-9]* /dev/xvd?[0-9]* /dev/nvme?n?p[0-9]* /dev/sd?[0-9]*; do
        [ -b "$disk" ] || continue
        if mount -t iso9660 -o ro "$disk" /run/config 2>/dev/null; then
            if [ -f /run/config/imagebuilder/env ]; then config=/run/config/imagebuilder/env; break; fi
            umount /run/config
        fi
    done
    if [ -z "$config" ] && [ -f /etc/imagebuilder/env ]; then
        config=/etc/imagebuilder/env disk=""
    fi
}

# Static network settings: the config's {{ net_prefix }}<n> lines ("mac=<MAC or any>
# address=A/N [gateway=G] [dns=D,...]"). Only lines of exactly that shape are taken, into
# /run/network.conf, which network.sh reads.
read_network() {
    awk '{ sub(/\r$/, "") }
         /^{{ net_prefix }}[0-9]+=mac=(any|[0-9a-f:]+) address=[0-9.\/]+( gateway=[0-9.]+)?( dns=[0-9.,]+)?$/ {
             sub(/^[^=]*=/, ""); print }' "$1" >> /run/network.conf
}

# On EC2: the instance's user-data (imagebuilder userdata REF --env E), read through IMDSv2.
# One short try: where there is no metadata service, this costs at most about 2 s. Its static
# network settings apply at once.
imds() {
    printf '%s %s HTTP/1.0\r\nHost: 169.254.169.254\r\n%s\r\n\r\n' "$1" "$2" "$3" \
        | nc -w 1 169.254.169.254 80 2>/dev/null \
        | awk '{ sub("\r$", "") } NR == 1 { if ($2 != 200) exit 1; next }
               body { print; next } $0 == "" { body = 1 }'
}
ec2_user_data() {
    token=$(imds PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 21600") \
        && [ -n "$token" ] \
        && (umask 077; imds GET /latest/user-data "X-aws-ec2-metadata-token: $token" \
            > /run/config.env) \
        && [ -s /run/config.env ] || return 1
    config=/run/config.env disk="" source="EC2 user-data"
    read_network "$config"
    apply_static_network
}

# The app's environment is built apart from the init's own, in a root-only file of NAME=VALUE
# lines that `env -i` hands to the app: env.awk keeps the config's lines that are assignments
# to a shell variable name, of a size the kernel can pass on, and logs (by line number, never
# the content) the ones it skips.
app_env=/run/imagebuilder/app.env
write_app_env() {
    # shellcheck disable=SC2174  # /run is the init's fresh tmpfs: -m applies to this one
    mkdir -p -m 0700 /run/imagebuilder
    (umask 077; echo "PATH=$PATH" > "$app_env")
    if [ -z "$config" ]; then
        say "no environment config found"
        return
    fi
    awk -v out="$app_env" -f {{ share }}/env.awk "$config" \
        | while IFS= read -r message; do say "$message"; done
    env_name=$(awk '/^IMAGEBUILDER_ENV=/ { name = substr($0, 18) } END { print name }' "$app_env")
    say "environment ${env_name:-?} from ${source:-${disk:+config drive }${disk:-an initrd layer}}"
}

# What the app always gets, over the config's lines (PORT: app.conf's APP_PORT, if any).
app_env_defaults() {
    {
        echo HOME=/tmp
        echo LANG=C.UTF-8
        echo JAVA_HOME=/opt/java
        [ -z "$1" ] || echo "PORT=$1"
    } >> "$app_env"
}
