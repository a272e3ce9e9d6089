//! What `echo-server --help` and its man page say after the options.

use manual::Block::{Example, Item, Text};
use manual::Section;

/// The sections, in man-page order.
pub(crate) const SECTIONS: &[Section] = &[
    Section {
        title: "EXAMPLES",
        body: &[
            Example { command: "echo-server", says: "Echo on port 7000, IPv4 and IPv6." },
            Example {
                command: "echo-server 0 --bind 127.0.0.1 -q",
                says: "Any free port on the IPv4 loopback (the first log line says which), \
                       warnings only.",
            },
            Example {
                command: "sudo echo-server 7 --user nobody --max-children 256 --max-per-ip 8",
                says: "The echo port, bound as root, served as nobody, at most 256 clients, \
                       8 per address.",
            },
            Example {
                command: "echo-server 7000 --prefork 16 --connections-per-child 0",
                says: "Pool mode: 16 children wait for connections and serve one after another.",
            },
            Example {
                command: "echo-server 7000 -- sh -c 'echo \"hello $TCPREMOTEIP\"'",
                says: "Exec mode: greet each client with its address instead of echoing.",
            },
            Example {
                command: "systemd-socket-activate -l 7000 echo-server",
                says: "Serve a socket passed by systemd (LISTEN_FDS) instead of binding.",
            },
            Example {
                command: "tcpserver 0 7000 echo-server --inetd",
                says: "inetd mode: serve the one connection on standard input, under \
                       tcpserver, inetd or systemd's Accept=yes.",
            },
            Example {
                command: "echo-server --generate man > echo-server.1",
                says: "Write this manual as a man page (or bash, zsh, fish completions).",
            },
        ],
    },
    Section {
        title: "SIGNALS",
        body: &[
            Item {
                term: "SIGTERM, SIGINT",
                text: "Shut down: the listeners close at once, children get --grace to \
                       finish, then SIGTERM, then SIGKILL 2 s later. A second signal skips \
                       the wait, a third sends SIGKILL.",
            },
            Item { term: "SIGQUIT", text: "Shut down without the grace period." },
            Item {
                term: "SIGUSR1",
                text: "Log the counters: accepted, refused by reason, active, children by \
                       outcome, fork failures, accept errors, log lines dropped.",
            },
            Item {
                term: "SIGHUP and the rest",
                text: "Logged and ignored. A signal the server was started with ignored \
                       stays ignored, except SIGTERM.",
            },
        ],
    },
    Section {
        title: "EXIT STATUS",
        body: &[
            Item { term: "0", text: "Shut down by a signal, every child reaped." },
            Item {
                term: "1",
                text: "Could not start or had to stop (bad address, port in use, failed \
                       privilege drop); one line on standard error says why. With --inetd: \
                       the connection failed or was refused.",
            },
            Item { term: "2", text: "Bad arguments. With --inetd: the peer stayed idle." },
        ],
    },
    Section {
        title: "ENVIRONMENT",
        body: &[
            Item {
                term: "RUST_LOG",
                text: "Log filter, overriding -v and -q (for example \
                       RUST_LOG=forkserve=debug).",
            },
            Item {
                term: "LISTEN_FDS, LISTEN_PID",
                text: "Sockets passed by systemd or systemd-socket-activate: served instead \
                       of binding PORT.",
            },
            Item {
                term: "NOTIFY_SOCKET",
                text: "systemd's notification socket: READY=1 once listening, STATUS= with \
                       the children in use, STOPPING=1 at shutdown.",
            },
        ],
    },
    Section {
        title: "SEE ALSO",
        body: &[Text(
            "echo-client(1), tcpserver(1), inetd(8), xinetd(8), systemd.socket(5), \
             systemd-socket-activate(1)",
        )],
    },
];
