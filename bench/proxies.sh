#!/usr/bin/env bash
# bench/proxies.sh: realipd's native listener side by side with HAProxy and
# nginx, each as one hop in front of the same application, on this machine.
# Run as root (make bench-proxies). Not part of CI.
#
# Topology (network namespaces this script makes and removes):
#
#   rb-client (10.201.0.1)  --veth--  rb-pod (10.201.0.2)
#   wrk, iperf3 -c                     app: nginx "return 200" on 0.0.0.0:8080
#                                      (and on :8090, never captured: "direct")
#                                      realipd: iptables --apply steers inbound
#                                        :8080 (HTTP mode) and :5201 (TCP) to
#                                        its inbound capture port 15006
#                                      HAProxy on :8081 (http) and :5202 (tcp)
#                                      nginx on :8082 (http) and :5203 (stream)
#                                      iperf3 -s on :5201
#
# Every proxy forwards to the same application on loopback, keeps upstream
# connections alive where it can, and sets the client's address for the app
# (realipd: x-real-ip and X-Forwarded-For; HAProxy: option forwardfor;
# nginx: X-Real-IP and X-Forwarded-For). The runs are interleaved over
# ROUNDS rounds of DURATION each; the medians and the ratios to the better
# of HAProxy and nginx are printed as a Markdown table, then realipd's
# ratios to each of them.
#
# Environment: ROUNDS (3), DURATION (5s), CONNS ("1 32 256"), TCP (1: run
# iperf3), REALIPD (a built binary; default: go build into a temp dir),
# PROFILE (a file: first write there a CPU profile of realipd under wrk -c32).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-1 32 256}"
TCP="${TCP:-1}"
POD=10.201.0.2
CLIENT=10.201.0.1

if [ "$(id -u)" -ne 0 ]; then
	echo "bench/proxies.sh: run as root (it makes network namespaces and iptables rules)" >&2
	exit 2
fi

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v wrk >/dev/null || need+=(wrk)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
	echo "installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d /tmp/realipd-bench.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
	# Every process left in the namespaces (the background jobs are
	# subshells: killing them would not reach ip netns exec's child).
	for ns in rb-pod rb-client; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
	done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	ip netns del rb-client 2>/dev/null || true
	ip netns del rb-pod 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

REALIPD="${REALIPD:-}"
if [ -z "$REALIPD" ]; then
	echo "building realipd" >&2
	CGO_ENABLED=0 go build -trimpath -o "$work/realipd" ./cmd/realipd
	REALIPD="$work/realipd"
fi

ip netns del rb-client 2>/dev/null || true
ip netns del rb-pod 2>/dev/null || true
ip netns add rb-client
ip netns add rb-pod
ip -n rb-client link set lo up
ip -n rb-pod link set lo up
ip link add rb-c type veth peer name rb-p
ip link set rb-c netns rb-client
ip link set rb-p netns rb-pod
ip -n rb-client addr add "$CLIENT/24" dev rb-c
ip -n rb-pod addr add "$POD/24" dev rb-p
ip -n rb-client link set rb-c up
ip -n rb-pod link set rb-p up
inpod() { ip netns exec rb-pod "$@"; }
inclient() { ip netns exec rb-client "$@"; }

# The application.
cat >"$work/app.conf" <<EOF
worker_processes 1;
pid $work/app.pid;
error_log $work/app.err;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	server {
		listen 0.0.0.0:8080 backlog=4096;
		listen 0.0.0.0:8090 backlog=4096;
		location / { return 200 "ok\n"; }
	}
}
EOF

# nginx as the proxy.
cat >"$work/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	upstream app { server 127.0.0.1:8080; keepalive 256; }
	server {
		listen $POD:8082 backlog=4096;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header X-Real-IP \$remote_addr;
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
		}
	}
}
stream {
	server { listen $POD:5203; proxy_pass 127.0.0.1:5201; }
}
EOF

# HAProxy.
cat >"$work/haproxy.cfg" <<EOF
global
	maxconn 4000
defaults
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-keep-alive 60s
frontend web
	mode http
	bind $POD:8081
	option forwardfor
	default_backend app
backend app
	mode http
	http-reuse always
	server app 127.0.0.1:8080
frontend tcp
	mode tcp
	bind $POD:5202
	default_backend tcpapp
backend tcpapp
	mode tcp
	server iperf 127.0.0.1:5201
EOF

# realipd: the native listener alone, HTTP mode on :8080, TCP on :5201.
cat >"$work/realipd.yaml" <<EOF
trust:
  strategy: rightmost_trusted_range
  trusted_cidrs: [$CLIENT/32]
extproc: {enabled: false}
xds: {enabled: false}
admin: {listen: 127.0.0.1:9902}
origdst:
  enabled: true
  listen: ["0.0.0.0:15006"]
  http_ports: [8080]
  max_connections: 20000
intercept:
  iptables:
    include_inbound_ports: [8080, 5201]
    include_outbound_cidrs: []
policies:
  - {name: blocklist, type: cidr, deny: [198.51.100.0/24]}
EOF

inpod "$REALIPD" iptables --config "$work/realipd.yaml" --apply >/dev/null
inpod nginx -c "$work/app.conf" -g 'daemon off;' & pids+=($!)
inpod nginx -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
inpod haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & pids+=($!)
inpod iperf3 -s -p 5201 >/dev/null 2>&1 & pids+=($!)
inpod "$REALIPD" serve --config "$work/realipd.yaml" >"$work/realipd.log" 2>&1 & pids+=($!)

wait_http() {
	for _ in $(seq 100); do
		if inclient curl -fsS -o /dev/null "http://$POD:$1/"; then return 0; fi
		sleep 0.1
	done
	echo "nothing answers on $POD:$1" >&2
	inclient curl -sS -o /dev/null -w '%{http_code}\n' "http://$POD:$1/" >&2 || true
	tail -n 5 "$work/realipd.log" "$work/haproxy.log" "$work/app.err" "$work/nginx.err" >&2
	exit 1
}
for p in 8090 8080 8081 8082; do wait_http "$p"; done
if [ "$(inclient curl -fsS -D - -o /dev/null "http://$POD:8080/" | tr -d '\r' | grep -ci '^content-length')" -ne 1 ]; then
	echo "realipd's answer looks wrong" >&2
	exit 1
fi

declare -A port=([direct]=8090 [realipd]=8080 [haproxy]=8081 [nginx]=8082)
declare -A tcpport=([realipd]=5201 [haproxy]=5202 [nginx]=5203)
targets=(direct realipd haproxy nginx)
results="$work/results"
: >"$results"

# wrk prints Requests/sec and, with --latency, the 50% and 99% latencies.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1000} else print v}'; }
run_wrk() { # target conns mode
	local t=$1 c=$2 mode=$3 extra=()
	[ "$mode" = close ] && extra=(-H "Connection: close")
	local out
	out="$(inclient wrk -t1 -c"$c" -d"$DURATION" --latency "${extra[@]}" "http://$POD:${port[$t]}/")"
	local rps p50 p99
	rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
	p50="$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)"
	p99="$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)"
	echo "http $mode c$c $t $rps $p50 $p99" >>"$results"
}
run_iperf() { # target
	local t=$1 out
	out="$(inclient iperf3 -c "$POD" -p "${tcpport[$t]}" -t "${DURATION%s}" -f g 2>&1)"
	local g
	g="$(awk '/receiver/ {for (i=1;i<=NF;i++) if ($i=="Gbits/sec") print $(i-1)}' <<<"$out" | tail -1)"
	echo "tcp - - $t ${g:-0} 0 0" >>"$results"
}

if [ -n "${PROFILE:-}" ]; then
	# A CPU profile of realipd under wrk -c32, written to $PROFILE.
	inclient wrk -t1 -c32 -d12s "http://$POD:8080/" >/dev/null &
	load=$!
	sleep 1
	inpod curl -fsS -o "$PROFILE" "http://127.0.0.1:9902/debug/pprof/profile?seconds=10"
	wait "$load"
	echo "profile written to $PROFILE" >&2
fi

for round in $(seq "$ROUNDS"); do
	echo "round $round/$ROUNDS" >&2
	for c in $CONNS; do
		for t in "${targets[@]}"; do run_wrk "$t" "$c" keepalive; done
	done
	for t in "${targets[@]}"; do run_wrk "$t" 32 close; done
	if [ "$TCP" = 1 ]; then
		for t in realipd haproxy nginx; do run_iperf "$t"; done
	fi
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
stat() { # kind mode conns target column
	awk -v k="$1" -v m="$2" -v c="$3" -v t="$4" -v col="$5" '$1==k && $2==m && $3==c && $4==t {print $col}' "$results" | median
}

# The HTTP scenarios, mode:cN, and their labels in the tables.
scenarios() { for c in $CONNS; do echo "keepalive:c$c"; done; echo close:c32; }
label_of() { # mode c
	if [ "$1" = close ]; then echo "${2#c}, Connection: close"; else echo "${2#c}"; fi
}

echo
echo "## HTTP (wrk -t1, $DURATION, medians of $ROUNDS interleaved rounds)"
echo
echo "| connections | target | requests/s | p50 ms | p99 ms | req/s vs best of HAProxy, nginx | p99 vs best |"
echo "|---|---|---|---|---|---|---|"
for scenario in $(scenarios); do
	mode="${scenario%%:*}" c="${scenario#*:}"
	hrps="$(stat http "$mode" "$c" haproxy 5)" nrps="$(stat http "$mode" "$c" nginx 5)"
	hp99="$(stat http "$mode" "$c" haproxy 7)" np99="$(stat http "$mode" "$c" nginx 7)"
	best_rps="$(awk -v a="$hrps" -v b="$nrps" 'BEGIN {print (a>b)?a:b}')"
	best_p99="$(awk -v a="$hp99" -v b="$np99" -v ra="$hrps" -v rb="$nrps" 'BEGIN {print (ra>rb)?a:b}')"
	for t in "${targets[@]}"; do
		rps="$(stat http "$mode" "$c" "$t" 5)" p50="$(stat http "$mode" "$c" "$t" 6)" p99="$(stat http "$mode" "$c" "$t" 7)"
		awk -v l="$(label_of "$mode" "$c")" -v t="$t" -v r="$rps" -v p50="$p50" -v p99="$p99" -v br="$best_rps" -v bp="$best_p99" \
			'BEGIN {printf "| %s | %s | %.0f | %.2f | %.2f | %.2f | %.2f |\n", l, t, r, p50, p99, (br>0)?r/br:0, (bp>0)?p99/bp:0}'
	done
done
echo
echo "## realipd against each (ratios of the medians above)"
echo
echo "| connections | req/s vs HAProxy | req/s vs nginx | p99 vs HAProxy | p99 vs nginx |"
echo "|---|---|---|---|---|"
for scenario in $(scenarios); do
	mode="${scenario%%:*}" c="${scenario#*:}"
	awk -v l="$(label_of "$mode" "$c")" \
		-v r="$(stat http "$mode" "$c" realipd 5)" -v h="$(stat http "$mode" "$c" haproxy 5)" -v n="$(stat http "$mode" "$c" nginx 5)" \
		-v rp="$(stat http "$mode" "$c" realipd 7)" -v hp="$(stat http "$mode" "$c" haproxy 7)" -v np="$(stat http "$mode" "$c" nginx 7)" \
		'function q(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
		BEGIN {printf "| %s | %s | %s | %s | %s |\n", l, q(r, h), q(r, n), q(rp, hp), q(rp, np)}'
done
if [ "$TCP" = 1 ]; then
	echo
	echo "## TCP (iperf3 -t ${DURATION%s}, one stream, medians)"
	echo
	echo "| target | Gbit/s | vs HAProxy |"
	echo "|---|---|---|"
	h="$(stat tcp - - haproxy 5)"
	for t in realipd haproxy nginx; do
		g="$(stat tcp - - "$t" 5)"
		awk -v t="$t" -v g="$g" -v h="$h" 'BEGIN {printf "| %s | %.2f | %.2f |\n", t, g, (h>0)?g/h:0}'
	done
fi
echo
echo "Machine: $(nproc) CPUs, $(uname -r); $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'); $(nginx -v 2>&1 | sed 's/.*\///;s/^/nginx /'); $(wrk --version 2>&1 | head -1 | awk '{print "wrk", $2}'); $("$REALIPD" version | head -1)"
