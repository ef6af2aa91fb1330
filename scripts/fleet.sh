#!/usr/bin/env bash
# A fleet on one machine (docs/fleet.md): one podman container per host of inventories/fleet, from a
# Debian node image this script builds itself (no image registry is needed), on a network of its own.
#   scripts/fleet.sh up       podman, the image (when missing or its recipe changed), network, containers,
#                             then playbooks/site.yml on the fleet
#   scripts/fleet.sh nodes    the same without site.yml (the test suite runs it itself)
#   scripts/fleet.sh image    only the node image
#   scripts/fleet.sh status   the containers and their state
#   scripts/fleet.sh down     removes the containers and the network it made (the image stays; --image too)
# Idempotent: a second `up` leaves running containers alone and starts stopped ones. Run as root.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$ROOT/scripts/fleet_image.sh"
INVENTORY="$ROOT/inventories/fleet"
LABEL=chenu.fleet
IMAGE_REPO=localhost/chenu-fleet-node
ANSIBLE_INVENTORY="$VENV/bin/ansible-inventory"
[ -x "$ANSIBLE_INVENTORY" ] || ANSIBLE_INVENTORY=ansible-inventory

log() { printf '[fleet %(%H:%M:%S)T] %s\n' -1 "$*"; }

ensure_podman() {
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing podman, runc and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }
  fi
  # crun refuses this kernel's hybrid cgroups; containers fail to start with ulimits above the
  # host's hard limits (nofile 20000 here).
  local conf=/etc/containers/containers.conf nofile
  nofile=$(( $(ulimit -Hn) < 16384 ? $(ulimit -Hn) : 16384 ))
  local want
  want=$(printf '# Written by chenu.agents scripts/fleet.sh\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=16384:16384"]\n\n[engine]\nruntime = "runc"\n' "$nofile" "$nofile")
  if [ ! -f "$conf" ] || ! grep -q '^runtime = "runc"' "$conf" || ! grep -q '^default_ulimits' "$conf"; then
    [ -f "$conf" ] && cp "$conf" "$conf.before-chenu-fleet"
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$want" >"$conf"
    log "wrote $conf (runc, ulimits nofile=$nofile)"
  fi
}

# The Debian mirror apt uses on this machine (deb822 sources first, then sources.list).
debian_mirror() {
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# The runtime's pip pins, as roles/sandbox_runtime declares them.
runtime_pins() {
  "$VENV/bin/python" - "$ROOT/roles/sandbox_runtime/defaults/main.yml" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
print(" ".join(f"'{p}'" for p in d["sandbox_runtime_pip_constraints"] + d["sandbox_runtime_pip_extra_packages"]))
PY
}

image_tag() {
  { cat "$ROOT/scripts/fleet_image.sh"; runtime_pins; debian_mirror; sha256sum </etc/ssl/certs/ca-certificates.crt; } \
    | sha256sum | cut -c1-12
}

build_image() {
  local tag image
  tag=$(image_tag)
  image="$IMAGE_REPO:$tag"
  if podman image exists "$image"; then
    echo "$image"
    return
  fi
  local started=$SECONDS dir base="$IMAGE_REPO-base:$tag" work="chenu-fleet-build-$tag"
  dir=$(mktemp -d /var/tmp/chenu-fleet-root.XXXXXX)
  log "building $image: debootstrap bookworm from $(debian_mirror)" >&2
  fleet_build_base "$dir" "$(debian_mirror)"
  tar -C "$dir" -c . | podman import --quiet - "$base" >/dev/null
  rm -rf "$dir"
  log "base imported ($((SECONDS - started)) s); installing the packages the roles use" >&2
  podman rm -f "$work" >/dev/null 2>&1 || true
  podman run --name "$work" --network host "$base" /bin/bash -c "$(fleet_node_script)" >&2
  # The machine's CA bundle, so pip in a node trusts the package index as this machine does.
  podman cp /etc/ssl/certs/ca-certificates.crt "$work:/etc/ssl/certs/ca-certificates.crt"
  podman commit --quiet "$work" "$work-stage" >/dev/null
  podman rm "$work" >/dev/null
  log "packages in ($((SECONDS - started)) s); pre-installing the runtime's pinned dependencies" >&2
  # shellcheck disable=SC2046
  podman run --name "$work" --network host "$work-stage" /bin/bash -c "$(fleet_venv_script $(runtime_pins))" >&2
  podman commit --quiet --change 'CMD ["/usr/bin/tini", "--", "sleep", "infinity"]' "$work" "$image" >/dev/null
  podman rm "$work" >/dev/null
  podman rmi "$work-stage" "$base" >/dev/null
  # Older node images of this script: their recipe changed.
  podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE_REPO:" | grep -v ":$tag\$" | xargs -r podman rmi >/dev/null 2>&1 || true
  log "image $image built in $((SECONDS - started)) s" >&2
  echo "$image"
}

# One line per container host of the inventory: name address network subnet caps(comma-separated or -).
fleet_hosts() {
  "$ANSIBLE_INVENTORY" -i "$INVENTORY" --list 2>/dev/null | "$VENV/bin/python" -c '
import json, sys
inv = json.load(sys.stdin)
hostvars = inv["_meta"]["hostvars"]
def hosts(group):
    g = inv.get(group, {})
    out = list(g.get("hosts", []))
    for child in g.get("children", []):
        out += hosts(child)
    return out
for name in sorted(set(hosts("nodes"))):
    v = hostvars[name]
    caps = ",".join(v.get("fleet_caps", [])) or "-"
    print(name, v["fleet_address"], v["fleet_network"], v["fleet_subnet"], caps)
'
}

ensure_network() {
  local network=$1 subnet=$2
  if ! podman network exists "$network"; then
    podman network create --label "$LABEL=1" --subnet "$subnet" "$network" >/dev/null
    log "network $network ($subnet) created"
  fi
}

# Every container gets SYS_PTRACE, which root has on a real host: without it start-stop-daemon cannot
# read /proc/PID/exe of a daemon running as another user, and Debian's init scripts then fail to stop
# (redis-server, for one) while reporting success.
BASE_CAPS=SYS_PTRACE

ensure_container() {
  local image=$1 name=$2 address=$3 network=$4 caps=$5 spec
  [ "$caps" = - ] && caps=$BASE_CAPS || caps="$BASE_CAPS,$caps"
  spec=$(printf '%s %s %s %s' "$image" "$address" "$network" "$caps" | sha256sum | cut -c1-12)
  if podman container exists "$name"; then
    local current state
    current=$(podman inspect --format '{{index .Config.Labels "chenu.fleet.spec"}}' "$name")
    state=$(podman inspect --format '{{.State.Status}}' "$name")
    if [ "$current" != "$spec" ]; then
      log "$name was made from another image, address or capabilities: replaced"
      podman rm -f "$name" >/dev/null
    elif [ "$state" != running ]; then
      podman start "$name" >/dev/null
      log "$name started again"
      return 0
    else
      return 0
    fi
  fi
  podman run --detach --name "$name" --hostname "$name" --label "$LABEL=1" --label "chenu.fleet.spec=$spec" \
    --network "$network" --ip "$address" --cap-add "$caps" "$image" >/dev/null
  log "$name up at $address"
}

nodes() {
  ensure_podman
  local image hosts
  image=$(build_image)
  hosts=$(fleet_hosts)
  [ -n "$hosts" ] || { echo "no hosts in $INVENTORY" >&2; exit 1; }
  read -r _ _ network subnet _ <<<"$(head -n1 <<<"$hosts")"
  ensure_network "$network" "$subnet"
  while read -r name address network _ caps; do
    ensure_container "$image" "$name" "$address" "$network" "$caps"
  done <<<"$hosts"
}

down() {
  command -v podman >/dev/null || return 0
  local ids
  ids=$(podman ps -aq --filter "label=$LABEL")
  [ -z "$ids" ] || podman rm -f $ids >/dev/null
  podman network ls -q --filter "label=$LABEL" | xargs -r podman network rm >/dev/null
  if [ "${1:-}" = --image ]; then
    podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE_REPO" | xargs -r podman rmi >/dev/null || true
  fi
  log "fleet removed"
}

case "${1:-}" in
  up)
    started=$SECONDS
    nodes
    log "nodes ready ($((SECONDS - started)) s); running playbooks/site.yml"
    cd "$ROOT" && ansible-playbook -i "$INVENTORY" playbooks/site.yml
    log "fleet up and provisioned in $((SECONDS - started)) s"
    ;;
  nodes) nodes ;;
  image) ensure_podman; build_image ;;
  status) podman ps -a --filter "label=$LABEL" --format '{{.Names}}\t{{.Status}}\t{{.Networks}}' ;;
  down) down "${2:-}" ;;
  *) echo "usage: $0 up|nodes|image|status|down [--image]" >&2; exit 2 ;;
esac
