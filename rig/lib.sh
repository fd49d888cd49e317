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
