//! An echo server that shouts: every byte a client sends comes back ASCII
//! uppercased, until the client closes its side.
//!
//! `cargo run -p forkserve --example uppercase -- PORT [ADDR]` (PORT 0 picks a
//! free port; ADDR defaults to 0.0.0.0). The child limit, reaping with logged
//! exit statuses and SIGTERM -> grace -> exit 0 come from the library.
#![allow(clippy::print_stderr)]

use std::error::Error;
use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

fn main() -> ExitCode {
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = args.first().and_then(|port| port.parse::<u16>().ok());
    let ip = args.get(1).map_or(Ok(IpAddr::from([0, 0, 0, 0])), |ip| ip.parse());
    let (Some(port), Ok(ip), ..=2) = (port, ip, args.len()) else {
        eprintln!("usage: uppercase PORT [ADDR]");
        return ExitCode::from(2);
    };
    if let Err(err) = serve(SocketAddr::new(ip, port)) {
        let causes = std::iter::successors(Some(&*err), |&err| err.source());
        eprintln!("error: {}", causes.map(|e| e.to_string()).collect::<Vec<_>>().join(": "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn serve(addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    let server = forkserve::Server::bind(&[addr], forkserve::DEFAULT_BACKLOG)?.max_children(64);
    // This closure runs in a new child process for each connection; its return
    // value is the child's exit status, which the parent logs when it reaps.
    server.serve(|mut conn| {
        let mut buf = [0; 16 * 1024];
        loop {
            let len = match conn.stream.read(&mut buf) {
                Ok(0) => return 0, // the client is done sending: a clean end
                Ok(len) => len,
                Err(_) => return 1, // reset by the client, say
            };
            buf[..len].make_ascii_uppercase();
            if conn.stream.write_all(&buf[..len]).is_err() {
                return 1;
            }
        }
    })?;
    Ok(())
}
