# The node image of the fleet (scripts/fleet.sh), sourced by it. Everything in this file is the
# image's recipe: fleet.sh hashes it, with the runtime's pip pins and the machine's CA bundle, into
# the image tag, so the image is rebuilt only when one of them changes.

# Debian packages the roles install, baked in so that provisioning a fleet downloads none of them
# once per node (roles/*/defaults/main.yml, roles/monitoring/vars/main.yml, plus keepalived and
# redis-sentinel for the fleet's failover paths). apt still runs in the roles: it finds them present.
FLEET_BASE_PACKAGES="python3,python3-apt,iproute2,procps,tini,ca-certificates"
FLEET_NODE_PACKAGES=(
  python3-psycopg2 python3-requests python3-venv python3-debian sudo curl iputils-ping
  postgresql-15 postgresql-client-15 postgresql-contrib postgresql-client
  redis-server redis-tools redis-sentinel
  rabbitmq-server
  haproxy socat keepalived
  supervisor
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter
  prometheus-redis-exporter daemon
  pgbackrest cron git awscli
)

# fleet_build_base DIR MIRROR: a minimal Debian bookworm root file system.
fleet_build_base() {
  debootstrap --variant=minbase --include="$FLEET_BASE_PACKAGES" bookworm "$1" "$2" >/dev/null
}

# fleet_node_script: run as root inside a container of the base image, then committed. Services must
# not start while the image is built (policy-rc.d); the roles start them on the nodes.
fleet_node_script() {
  cat <<SCRIPT
set -eu
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ${FLEET_NODE_PACKAGES[*]} >/dev/null
apt-get clean
rm -f /usr/sbin/policy-rc.d
# pip (and the runtime's virtualenv's pip) trusts what the machine trusts.
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
SCRIPT
}

# fleet_venv_script PINS...: the runtime's dependencies, pinned as roles/sandbox_runtime pins them,
# pre-installed into the virtualenv the role installs the package into (it then adds only the package).
fleet_venv_script() {
  cat <<SCRIPT
set -eu
python3 -m venv /opt/chenu-agents/venv
/opt/chenu-agents/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check $*
SCRIPT
}
