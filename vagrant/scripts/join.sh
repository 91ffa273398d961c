#!/usr/bin/env bash
# Lab join step: waits for every cluster's API server, writes kubeconfigs and sdnlinkd's config,
# then starts sdnlinkd. Idempotent; runs as sdnlink-lab-join.service.
set -euo pipefail
lab() { jq -r "$1" /etc/sdnlink-lab/lab.json; }
cluster="$(lab .cluster)"

exempt_from_masquerade() {
    # k3s' flannel masquerades pod traffic to every destination outside its own cluster CIDR, so
    # a pod's packets to a remote pod or ClusterIP would leave with the transit address as source
    # and the remote side could not route replies. sdnlinkd keeps pod source addresses (IPVS
    # masquerade only rewrites the destination), so exempt the remote CIDRs.
    local src="$1" dst="$2"
    iptables -t nat -C POSTROUTING -s "$src" -d "$dst" -j RETURN 2>/dev/null \
        || iptables -t nat -I POSTROUTING 1 -s "$src" -d "$dst" -j RETURN
}

install -d -m 0755 /etc/sdnlink
local_pod="$(jq -r --arg c "$cluster" '.clusters[] | select(.name == $c) | .pod_cidr' /etc/sdnlink-lab/lab.json)"
for name in $(lab '.clusters[].name'); do
    c() { jq -r --arg n "$name" ".clusters[] | select(.name == \$n) | $1" /etc/sdnlink-lab/lab.json; }
    server="https://$(c .server_ip):6443"
    until curl -sfk --max-time 5 "$server/cacerts" -o "/etc/sdnlink-lab/$name-ca.crt"; do sleep 5; done
    # Trust on first use, over the lab's private network: k3s serves its CA at /cacerts.
    umask 0077
    cat >"/etc/sdnlink/$name.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: $name
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 "/etc/sdnlink-lab/$name-ca.crt")
users:
  - name: sdnlinkd
    user:
      token: $(c .tokens.sdnlinkd)
contexts:
  - name: $name
    context: {cluster: $name, user: sdnlinkd}
current-context: $name
KUBECONFIG
    umask 0022
    if [ "$name" != "$cluster" ]; then
        exempt_from_masquerade "$local_pod" "$(c .pod_cidr)"
        exempt_from_masquerade "$local_pod" "$(c .svc_cidr)"
    fi
done

{
    echo "# Written by the sdnlinkd Vagrant lab (vagrant/scripts/join.sh)."
    echo "[local]"
    jq -r --arg c "$cluster" --arg n "$(lab .node)" '.clusters[] | select(.name == $c) |
        "name = \"\(.name)\"\npod_cidrs = [\"\(.pod_cidr)\"]\nservice_cidrs = [\"\(.svc_cidr)\"]\nnode_name = \"\($n)\"\nkubeconfig = \"/etc/sdnlink/\(.name).kubeconfig\""' \
        /etc/sdnlink-lab/lab.json
    echo
    echo "[tunnel]"
    echo "endpoint = \"$(lab .ip):51820\""
    jq -r --arg c "$cluster" '.clusters[] | select(.name != $c) |
        "\n[[remote]]\nname = \"\(.name)\"\nkubeconfig = \"/etc/sdnlink/\(.name).kubeconfig\"\npod_cidrs = [\"\(.pod_cidr)\"]\nservice_cidrs = [\"\(.svc_cidr)\"]"' \
        /etc/sdnlink-lab/lab.json
} >/etc/sdnlink/sdnlink.toml.new
mv /etc/sdnlink/sdnlink.toml.new /etc/sdnlink/sdnlink.toml

sdnlinkd check-config
systemctl enable sdnlinkd.service
if systemctl is-active --quiet sdnlinkd.service; then
    systemctl reload sdnlinkd.service
else
    systemctl start sdnlinkd.service
fi
systemctl --no-pager status sdnlinkd.service | head -n 5
