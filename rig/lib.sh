# Shared by the rig's build scripts (sourced; they define log()).

# need_packages PKG...: install those host packages that are missing.
need_packages() {
    local missing="" p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    log "installing host packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $missing >/dev/null
}

# deb_file DIR PKG VERSION: print the path of that version's .deb in DIR
# (fails if it is not there).
deb_file() {
    ls "$1/${2}_$(echo "$3" | sed 's/:/%3a/')_"*.deb 2>/dev/null
}

# fetch_debs DIR PKG=VERSION...: download those .debs into DIR, unless there
# already.  They are only unpacked, never installed on the host.
fetch_debs() {
    local dir=$1 pv
    shift
    for pv in "$@"; do
        deb_file "$dir" "${pv%%=*}" "${pv#*=}" >/dev/null ||
            (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$pv" >&2) ||
            { log "apt-get download $pv failed (stale lists? run apt-get update)"; return 1; }
    done
}
