//! What `echo-client --help` and its man page say after the options.

use manual::Block::{Example, Item, Text};
use manual::Section;

/// The sections, in man-page order.
pub(crate) const SECTIONS: &[Section] = &[
    Section {
        title: "EXAMPLES",
        body: &[
            Example {
                command: "echo-client localhost 7000",
                says: "Type lines; each is sent and its echo printed. Ctrl-D ends.",
            },
            Example {
                command: "echo-client ::1 7000 < big.bin > back.bin",
                says: "Stream a file through the server and keep what comes back.",
            },
            Example {
                command: "echo-client --check --timeout 2 db1.example.org 7",
                says: "Health probe: exit 0 and print the times if the echo is right within \
                       2 s, 1 with the reason otherwise.",
            },
            Example {
                command: "echo-client --generate bash > /etc/bash_completion.d/echo-client",
                says: "Install bash completions (also: man, zsh, fish).",
            },
        ],
    },
    Section {
        title: "EXIT STATUS",
        body: &[
            Item { term: "0", text: "Everything sent was echoed back and the server closed." },
            Item {
                term: "1",
                text: "Could not connect, the connection failed, the echo was wrong, or the \
                       server kept the client waiting past --timeout; one line on standard \
                       error says which.",
            },
            Item { term: "2", text: "Bad arguments." },
        ],
    },
    Section {
        title: "ENVIRONMENT",
        body: &[Item { term: "RUST_LOG", text: "Log filter, overriding -v and -q." }],
    },
    Section { title: "SEE ALSO", body: &[Text("echo-server(1)")] },
];
