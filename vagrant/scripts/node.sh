#!/usr/bin/env bash
# Provisions one lab node: k3s (server or agent), the locally built sdnlinkd package, and the
# background join step that configures and starts sdnlinkd once every cluster's API answers.
# Runs as root inside the VM; $SDNLINK_LAB is the JSON the Vagrantfile hands over.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq curl jq python3 ca-certificates dnsutils iproute2 nftables iptables \
    wireguard-tools wireguard-go ipvsadm >/dev/null

install -d -m 0700 /etc/sdnlink-lab
printf '%s\n' "$SDNLINK_LAB" >/etc/sdnlink-lab/lab.json
chmod 0600 /etc/sdnlink-lab/lab.json
lab() { jq -r "$1" /etc/sdnlink-lab/lab.json; }
me() { jq -r --arg c "$(lab .cluster)" ".clusters[] | select(.name == \$c) | $1" /etc/sdnlink-lab/lab.json; }

ip_addr="$(lab .ip)"
# Box images differ in interface naming; the lab network is the one holding our address.
iface="$(ip -o -4 addr show | awk -v ip="$ip_addr" '{ split($4, a, "/"); if (a[1] == ip) print $2 }')"
[ -n "$iface" ] || { echo "no interface holds $ip_addr" >&2; exit 1; }

if ! systemctl is-active --quiet k3s k3s-agent; then
    if [ "$(lab .server)" = "true" ]; then
        # Static API tokens: one for sdnlinkd (RBAC below), one admin token for check.sh.
        install -d -m 0700 /etc/rancher/k3s
        {
            printf '%s,sdnlinkd,sdnlinkd\n' "$(me .tokens.sdnlinkd)"
            printf '%s,lab-admin,lab-admin,"system:masters"\n' "$(me .tokens.admin)"
        } >/etc/rancher/k3s/sdnlink-tokens.csv
        chmod 0600 /etc/rancher/k3s/sdnlink-tokens.csv
        curl -sfL https://get.k3s.io | K3S_TOKEN="$(me .tokens.join)" INSTALL_K3S_EXEC="server \
            --node-ip $ip_addr --advertise-address $ip_addr --tls-san $ip_addr --flannel-iface $iface \
            --cluster-cidr $(me .pod_cidr) --service-cidr $(me .svc_cidr) \
            --cluster-domain $(me .domain) --disable traefik --write-kubeconfig-mode 0600 \
            --kube-apiserver-arg token-auth-file=/etc/rancher/k3s/sdnlink-tokens.csv" sh -
    else
        curl -sfL https://get.k3s.io | K3S_URL="https://$(me .server_ip):6443" \
            K3S_TOKEN="$(me .tokens.join)" \
            INSTALL_K3S_EXEC="agent --node-ip $ip_addr --flannel-iface $iface" sh -
    fi
fi

if [ "$(lab .server)" = "true" ]; then
    until k3s kubectl get --raw /readyz >/dev/null 2>&1; do sleep 2; done
    # sdnlinkd reads Services, EndpointSlices and Nodes, and annotates its own Node with its
    # WireGuard public key and endpoint.
    k3s kubectl apply -f - <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: sdnlinkd}
rules:
  - apiGroups: [""]
    resources: [services, nodes]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [nodes]
    verbs: [patch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: sdnlinkd}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sdnlinkd}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: sdnlinkd}
YAML
    # Pods resolve cluster.<name> and cluster.all through CoreDNS, which forwards those zones to
    # the sdnlinkd DNS stub on the pod's own node (k3s imports *.server keys of coredns-custom).
    zones="cluster.all:53 $(jq -r '[.clusters[].name | "cluster.\(.):53"] | join(" ")' /etc/sdnlink-lab/lab.json)"
    k3s kubectl -n kube-system apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns-custom, namespace: kube-system}
data:
  sdnlink.server: |
    $zones {
      forward . 169.254.20.53
    }
YAML
fi

# --force-confold: on re-provisioning (an upgrade), keep the config join.sh wrote.
apt-get install -y -qq -o Dpkg::Options::=--force-confold /tmp/sdnlink-lab/sdnlinkd.deb >/dev/null
install -m 0755 /tmp/sdnlink-lab/join.sh /usr/local/sbin/sdnlink-lab-join
cat >/etc/systemd/system/sdnlink-lab-join.service <<'UNIT'
[Unit]
Description=sdnlinkd lab: configure and start sdnlinkd once every cluster's API answers
After=network-online.target k3s.service k3s-agent.service
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/sdnlink-lab-join
TimeoutStartSec=45min
UNIT
systemctl daemon-reload
# In the background: with sequential provisioning the other cluster's server may not exist yet.
# restart, not start: on re-provisioning it rewrites the config and reloads sdnlinkd.
systemctl restart --no-block sdnlink-lab-join.service
echo "node $(lab .node): k3s up, sdnlinkd installed, join step started"
