complete -c lastcall -l listen -d 'Where the HTTP endpoint (/readyz, /livez, /metrics) listens: IP:PORT, HOST:PORT, :PORT, or `off`' -r
complete -c lastcall -l prestop-delay -d 'Time between turning unready and sending the stop signal; `auto` is 5s in Kubernetes (KUBERNETES_SERVICE_HOST set) or once /readyz has been requested, else 0' -r
complete -c lastcall -l grace-period -d 'Time after the stop signal before SIGKILL' -r
complete -c lastcall -l stop-signal -d 'The signal that asks the child to stop [default: the one that started the drain: TERM for docker stop and Kubernetes, INT for Ctrl-C]' -r
complete -c lastcall -l success-exit -d 'Exit with 0 instead of CODE (repeatable; the variable takes a comma list), e.g. 143' -r
complete -c lastcall -l max-connections -d 'At most this many connections to the endpoint; a new one beyond it makes room by closing the one idle longest (then the oldest partial request, then the one whose answers have not moved for longest)' -r
complete -c lastcall -l request-timeout -d 'How long a request head may take to arrive before the connection is closed' -r
complete -c lastcall -l idle-timeout -d 'How long a keep-alive connection may wait for its next request' -r
complete -c lastcall -l ready-tcp -d 'Ready only when a TCP connect to HOST:PORT succeeds (repeatable; HOST is resolved once)' -r
complete -c lastcall -l ready-http -d 'Ready only when GET URL answers 2xx (plain http://, repeatable)' -r
complete -c lastcall -l ready-exec -d 'Ready only when `sh -c CMD` exits 0 (repeatable; the variable holds one command)' -r
complete -c lastcall -l ready-interval -d 'Time between two rounds of readiness checks' -r
complete -c lastcall -l ready-timeout -d 'How long one readiness check may take before it counts as failed' -r
complete -c lastcall -l startup-timeout -d 'After this, an app that never became ready is logged as such (it keeps running, unready)' -r
complete -c lastcall -l drain-idle-port -d 'The app\'s TCP ports that the drain watches: during the preStop delay, stop early once nothing can be in flight on them and the routers have let go (see --drain-quiet, --drain-probes). auto: the ports the child\'s processes and --socket listen on; off: wait the whole delay' -r
complete -c lastcall -l drain-quiet -d 'The shortest silence (no request to the app) after which the drain may end early' -r
complete -c lastcall -l drain-probes -d 'The 503 answers each client that was probing /readyz must have had before the drain ends early (HAProxy\'s `fall` and the kubelet\'s `failureThreshold` default to 3)' -r
complete -c lastcall -l drain-min -d 'The shortest preStop phase of a drain that watches the app' -r
complete -c lastcall -l wait-for -d 'Before starting the child, wait until this answers (repeatable): tcp://HOST:PORT (a connect succeeds) or http://HOST:PORT/PATH (a GET answers 2xx); HOST is resolved once' -r
complete -c lastcall -l wait-for-exec -d 'Before starting the child, wait until `sh -c CMD` exits 0 (repeatable; the variable holds one command)' -r
complete -c lastcall -l wait-timeout -d 'How long to wait for --wait-for and --wait-for-exec before giving up' -r
complete -c lastcall -l on-wait-timeout -d 'When --wait-timeout passes with a dependency down: `exit` (status 124, the child never starts) or `start` (start the child anyway, with a warning)' -r
complete -c lastcall -l on-exit -d 'When the child and every process under lastcall are gone, POST to this http:// URL before exiting (repeatable; e.g. a proxy\'s quit endpoint); never changes the exit status' -r
complete -c lastcall -l on-exit-exec -d 'When the child and every process under lastcall are gone, run `sh -c CMD` before exiting (repeatable, after the --on-exit URLs; the variable holds one command)' -r
complete -c lastcall -l on-exit-timeout -d 'How long each --on-exit or --on-exit-exec hook may take; a command is then killed' -r
complete -c lastcall -l socket -d 'Bind this socket and pass it to the child by socket activation (repeatable): [NAME=]tcp://HOST:PORT or [NAME=]unix:/path' -r
complete -c lastcall -l reload-signal -d 'With --socket: on this signal, start a new child on the same sockets, wait until it is ready, then drain the old one [default: HUP]' -r
complete -c lastcall -l restart -d 'Start the child again when it exits on its own while running: `on-failure` (a non-zero status after --success-exit, or a signal), `always`, or `never`; a drain ends it' -r
complete -c lastcall -l restart-delay -d 'The backoff before the first restart within --restart-window; doubled for each restart made within it' -r
complete -c lastcall -l restart-max-delay -d 'The longest backoff' -r
complete -c lastcall -l restart-limit -d 'At most this many restarts within --restart-window: a child that ends past it is not restarted, and lastcall exits with its status' -r
complete -c lastcall -l restart-window -d 'The window the restart budget and the backoff count restarts in' -r
complete -c lastcall -l user -d 'Run the child as USER (name or uid) with its HOME and groups, or with GROUP alone, from /etc/passwd and /etc/group, and no capability; lastcall stays as it is (root)' -r
complete -c lastcall -l log-level -d 'error, warn, info, debug or trace' -r
complete -c lastcall -l log-format -d 'How log lines look on stderr: `text` (lastcall: message) or `json` (one object per line, with ts, level, msg, and the shutdown steps\' data)' -r
complete -c lastcall -l termination-log -d 'Where to write, on exit, one line saying why lastcall ended (Kubernetes shows it), or `off` [default: /dev/termination-log if it exists, else off]' -r
complete -c lastcall -l group -d 'Send forwarded and stop signals to the child\'s whole process group'
complete -c lastcall -l no-subreaper -d 'Do not become a child subreaper when not PID 1'
complete -c lastcall -l ready-notify -d 'Ready only once the child sends READY=1 to NOTIFY_SOCKET (STOPPING=1: unready again)'
complete -c lastcall -s h -l help -d 'Print help'
complete -c lastcall -s V -l version -d 'Print version'
