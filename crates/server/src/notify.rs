//! Readiness for a service manager: with `NOTIFY_SOCKET` set (systemd's
//! `Type=notify`), `READY=1` once every listener is up, `STATUS=` whenever the
//! children in use cross a tenth of the limit, and `STOPPING=1` when shutdown
//! starts.
//!
//! Hand-written rather than taken from the `sd-notify` crate: that crate
//! sends with a blocking `send_to`, and a manager that stops reading its
//! socket would then stall the event loop. Here the socket is non-blocking and
//! a message that does not fit is dropped (the next one says the current
//! state anyway). The protocol is one datagram of `KEY=VALUE` lines to the
//! socket named by `NOTIFY_SOCKET`: a path, or `@name` for the abstract
//! namespace (sd_notify(3)).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if it is set; a value that is
    /// not a socket address, or a socket that cannot be made, is a warning
    /// and no notifier (the server serves anyway).
    pub(crate) fn from_env() -> Option<Self> {
        let name = std::env::var_os("NOTIFY_SOCKET").filter(|name| !name.is_empty())?;
        let bytes = name.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
            None => SocketAddr::from_pathname(&name),
        };
        // Connected now, while the server may still be root: a socket file
        // that only root may write to stays reachable after `--user`.
        let made = addr.and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            socket.connect_addr(&addr)?;
            socket.set_nonblocking(true)?;
            Ok(Self { socket })
        });
        match made {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                tracing::warn!("ignoring NOTIFY_SOCKET={name:?}: {err}");
                None
            }
        }
    }

    /// Sends `state` (`KEY=VALUE` lines) without waiting; a failure is a
    /// warning for `READY=1` and `STOPPING=1`, which are sent once (a status
    /// update is followed by others, so its loss is a debug line), and never
    /// a stall.
    pub(crate) fn send(&self, state: &str) {
        if let Err(err) = self.socket.send(state.as_bytes()) {
            if state.starts_with("READY=") || state.starts_with("STOPPING=") {
                tracing::warn!("cannot notify the service manager ({state:?}): {err}");
            } else {
                tracing::debug!("cannot notify the service manager ({state:?}): {err}");
            }
        }
    }
}
