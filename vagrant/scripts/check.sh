#!/usr/bin/env bash
# Lab check, run on the last node: deploys the sample app (agnhost netexec behind a Service) in
# every cluster, then from a pod in each cluster checks every other cluster: DNS of
# <svc>.<ns>.svc.cluster.<name> and cluster.all, HTTP to the remote ClusterIP, HTTP to a remote
# pod IP. Prints one PASS/FAIL line per check and "N passed, M failed"; non-zero on any failure.
set -uo pipefail
lab() { jq -r "$1" /etc/sdnlink-lab/lab.json; }
APP_IMAGE="registry.k8s.io/e2e-test-images/agnhost:2.47"
CLIENT_IMAGE="busybox:1.36"
passed=0 failed=0
result() {
    if [ "$1" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $2"; else failed=$((failed + 1)); echo "FAIL $2"; fi
}

# Admin kubeconfigs from the lab's static admin tokens (CA as fetched by the join step).
kc() { echo "/etc/sdnlink-lab/$1-admin.kubeconfig"; }
for name in $(lab '.clusters[].name'); do
    c() { jq -r --arg n "$name" ".clusters[] | select(.name == \$n) | $1" /etc/sdnlink-lab/lab.json; }
    until [ -s "/etc/sdnlink-lab/$name-ca.crt" ]; do sleep 5; done
    umask 0077
    cat >"$(kc "$name")" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: $name, cluster: {server: "https://$(c .server_ip):6443", certificate-authority: /etc/sdnlink-lab/$name-ca.crt}}]
users: [{name: admin, user: {token: $(c .tokens.admin)}}]
contexts: [{name: $name, context: {cluster: $name, user: admin}}]
current-context: $name
KUBECONFIG
    umask 0022
    k() { k3s kubectl --kubeconfig "$(kc "$name")" "$@"; }
    until k get --raw /readyz >/dev/null 2>&1; do sleep 5; done
    k apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
        - name: netexec
          image: $APP_IMAGE
          args: [netexec, --http-port=8080]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
YAML
    k rollout status deployment/hello --timeout=10m
done

# Every node's sdnlinkd must be up before traffic can cross: wait for the join steps to finish
# (they publish the WireGuard key on the Node, which is what remote peers need).
for name in $(lab '.clusters[].name'); do
    for node in $SDNLINK_LAB_NODES; do
        case "$node" in "$name"-*) ;; *) continue ;; esac
        for _ in $(seq 120); do
            k3s kubectl --kubeconfig "$(kc "$name")" get node "$node" \
                -o jsonpath='{.metadata.annotations.sdnlink\.io/wireguard-public-key}' | grep -q . && break
            sleep 5
        done
    done
done

for from in $(lab '.clusters[].name'); do
    for to in $(lab '.clusters[].name'); do
        [ "$from" = "$to" ] && continue
        svc_cidr="$(jq -r --arg n "$to" '.clusters[] | select(.name == $n) | .svc_cidr' /etc/sdnlink-lab/lab.json)"
        pod_ip="$(k3s kubectl --kubeconfig "$(kc "$to")" get pods -l app=hello \
            -o jsonpath='{.items[0].status.podIP}')"
        run() {
            k3s kubectl --kubeconfig "$(kc "$from")" run "check-$from-$to-$RANDOM" --rm -i --quiet \
                --restart=Never --image="$CLIENT_IMAGE" --command -- sh -c "$1" 2>&1
        }
        # Retry for a while: remote peers and services appear within a sync or two.
        attempt() { for _ in $(seq 12); do out="$(run "$1")" && [ -n "$out" ] && return 0; sleep 10; done; return 1; }

        attempt "nslookup hello.default.svc.cluster.$to | awk '/^Address/ && !/#53/ {print \$2}'"
        addr="$(printf '%s\n' "$out" | tail -n1)"
        in_cidr="$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]) in ipaddress.ip_network(sys.argv[2]))' "$addr" "$svc_cidr" 2>/dev/null)"
        [ "$in_cidr" = "True" ]
        result $? "$from -> $to: hello.default.svc.cluster.$to resolves to a $to ClusterIP ($addr)"

        attempt "nslookup hello.default.svc.cluster.all | awk '/^Address/ && !/#53/ {print \$2}'"
        result $? "$from -> $to: hello.default.svc.cluster.all resolves"

        attempt "wget -qO- -T 5 http://hello.default.svc.cluster.$to/hostname"
        result $? "$from -> $to: HTTP to the remote ClusterIP answered by pod $out"

        attempt "wget -qO- -T 5 http://$pod_ip:8080/hostname"
        result $? "$from -> $to: HTTP to remote pod IP $pod_ip answered by pod $out"
    done
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
