#!/bin/sh
# The container checks' child program, run by busybox sh under lastcall (PID 1 of the
# container). It writes what happens to stdout, which the checks read with `podman logs -t`
# (conmon stamps each line with the time it arrived).
#
#   app.sh serve        leaves 20 orphans behind (sleep 3, reparented to PID 1), reports
#                       SIGHUP, and exits 42 on SIGTERM
#   app.sh ignore-term  ignores SIGTERM, as a stuck app would: only SIGKILL ends it
echo "app: started as pid $$, parent $PPID"
case "$1" in
serve)
    i=0
    while [ $i -lt 20 ]; do
        (sleep 3 &)
        i=$((i + 1))
    done
    echo "app: orphans spawned"
    trap 'echo "app: got SIGTERM"; exit 42' TERM
    trap 'echo "app: got SIGHUP"' HUP
    # `wait` returns as soon as a trapped signal arrives; a foreground sleep would delay it.
    while :; do
        sleep 1 &
        wait $!
    done
    ;;
ignore-term)
    trap '' TERM
    echo "app: ignoring SIGTERM"
    while :; do
        sleep 1
    done
    ;;
*)
    echo "app: unknown mode: $1" >&2
    exit 2
    ;;
esac
