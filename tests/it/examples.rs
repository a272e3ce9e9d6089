//! forkserve's examples, driven from outside as processes: `daytime` sends one
//! HTTP-date line, `uppercase` echoes with ASCII letters uppercased; both get
//! reaping, logging, grace and a clean exit from the library, and stay short.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use integration_tests::{Server, TIMEOUT, example, workspace_root};
use nix::sys::signal::Signal;

use crate::{loopbacks, payload};

/// The examples under test, by name.
const EXAMPLES: [&str; 2] = ["daytime", "uppercase"];

/// The most lines of code an example may have (the limit).
const MAX_CODE_LINES: usize = 40;

/// Starts example `name` on port 0 of `ip`, and checks it bound where asked.
fn example_server(name: &str, ip: &str) -> Server {
    let program = example(name).unwrap();
    let server = Server::start_program(&program, &["0", ip])
        .unwrap_or_else(|e| panic!("cannot start {name} on {ip}: {e}"));
    assert_eq!(server.addr().ip(), ip.parse::<IpAddr>().unwrap(), "{name} bound elsewhere");
    server
}

/// A connection to `addr` whose reads and writes give up after [`TIMEOUT`].
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Sends `message` and reads back exactly `reply.len()` bytes, which must be `reply`.
fn round_trip(stream: &mut TcpStream, message: &[u8], reply: &[u8]) {
    stream.write_all(message).unwrap();
    let mut got = vec![0; reply.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, reply, "reply to {:?}", String::from_utf8_lossy(message));
}

/// Sends all of `data` from a second thread, then shuts down the write side,
/// while this thread reads everything the server sends until EOF.
fn send_all_and_read_to_eof(stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let data = data.to_vec();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut received = Vec::new();
    let read = (&stream).read_to_end(&mut received);
    let sent = sender.join().unwrap();
    let got = received.len();
    read.unwrap_or_else(|e| panic!("reading the reply failed after {got} bytes: {e}"));
    sent.unwrap_or_else(|e| panic!("sending failed: {e}"));
    received
}

/// Checks the server's log says the child that served `peer` exited with
/// status 0, and that no child is left, not even a zombie.
fn child_of_peer_exited_cleanly(server: &Server, peer: SocketAddr) {
    let tag = format!("peer={peer}");
    server.wait_for_log(&["child exited with status 0", &tag], 1, TIMEOUT).unwrap();
    server.wait_for_children(0, TIMEOUT).unwrap();
}

/// SIGTERM with no client left: exit code 0, after saying so.
fn terminates_with_0(mut server: Server) {
    let status = server.terminate(TIMEOUT).unwrap();
    let log = server.log().join("\n");
    assert_eq!(status.code(), Some(0), "exited with {status}: {log}");
    assert!(log.contains("all children reaped; exiting"), "{log}");
}

#[test]
fn daytime_sends_one_line_with_the_current_http_date_then_closes() {
    for ip in loopbacks() {
        let server = example_server("daytime", ip);
        let before = unix_now();
        let stream = connect(server.addr());
        let peer = stream.local_addr().unwrap();
        let mut received = Vec::new();
        (&stream).read_to_end(&mut received).unwrap();
        let after = unix_now();

        let text = String::from_utf8(received).unwrap();
        let line = text.strip_suffix("\r\n").unwrap_or_else(|| panic!("no CRLF end: {text:?}"));
        assert!(!line.contains(['\r', '\n']), "more than one line: {text:?}");
        let date = parse_http_date(line).unwrap();
        let years = [year_of(before), year_of(after)];
        assert!(years.contains(&year_of(date)), "{line:?} is not in {years:?}");
        // The date was taken between connecting and the end of the reply; a
        // little slack for a wall clock being adjusted meanwhile.
        let now = before - 2..=after + 2;
        assert!(now.contains(&date), "{line:?} ({date}) is not now ({now:?}, Unix time)");

        child_of_peer_exited_cleanly(&server, peer);
        terminates_with_0(server);
    }
}

#[test]
fn uppercase_shouts_ascii_letters_and_leaves_every_other_byte_alone() {
    // Letters next to the ASCII letters' edges, UTF-8 (é is C3 A9, É is C3 89),
    // every byte value, then enough binary for several reads.
    let mut sent = b"Hello, w\xC3\xA9rld! caf\xC3\xA9 \xC3\x89t\xC3\xA9 @AZ[ `az{ \0\r\n".to_vec();
    sent.extend(0..=u8::MAX);
    sent.extend(payload(100_000, 7));
    let expected = sent.to_ascii_uppercase();
    assert_ne!(expected, sent, "the payload must have lowercase letters");
    for ip in loopbacks() {
        let server = example_server("uppercase", ip);
        let stream = connect(server.addr());
        let peer = stream.local_addr().unwrap();
        let echoed = send_all_and_read_to_eof(stream, &sent);
        if let Some(at) =
            (0..expected.len().max(echoed.len())).find(|&i| expected.get(i) != echoed.get(i))
        {
            let around = at.saturating_sub(4)..at + 4;
            panic!(
                "over {ip}: {} bytes back for {} sent; first difference at {at}: \
                 expected {:x?}, got {:x?}",
                echoed.len(),
                sent.len(),
                expected.get(around.start..around.end.min(expected.len())),
                echoed.get(around.start..around.end.min(echoed.len())),
            );
        }
        child_of_peer_exited_cleanly(&server, peer);
        terminates_with_0(server);
    }
}

#[test]
fn uppercase_on_sigterm_lets_a_connected_client_finish_then_exits_0() {
    let mut server = example_server("uppercase", "127.0.0.1");
    let addr = server.addr();
    let mut client = connect(addr);
    round_trip(&mut client, b"before", b"BEFORE");
    server.wait_for_children(1, TIMEOUT).unwrap();

    server.signal(Signal::SIGTERM).unwrap();
    server.wait_for_log(&["received SIGTERM"], 1, TIMEOUT).unwrap();
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "the listener must close at once");
    // The library's grace (5 s in the examples): the held client is served on.
    round_trip(&mut client, b"still here", b"STILL HERE");
    assert!(server.is_running(), "the server must wait for its client");

    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    drop(client);
    let status = server.wait(TIMEOUT).unwrap();
    let log = server.log().join("\n");
    assert_eq!(status.code(), Some(0), "exited with {status}: {log}");
    assert!(log.contains("child exited with status 0"), "{log}");
    assert!(log.contains("all children reaped; exiting"), "{log}");
    assert!(!log.contains("sent SIGTERM"), "the child was not given its grace: {log}");
}

#[test]
fn examples_refuse_a_bad_port_with_their_usage_and_exit_2() {
    for name in EXAMPLES {
        let done = Server::run_program(&example(name).unwrap(), &["notaport"], TIMEOUT).unwrap();
        let all = done.stderr.join("\n");
        assert_eq!(done.status.code(), Some(2), "{name} exited with {}: {all}", done.status);
        let usage = format!("usage: {name} PORT");
        assert!(
            done.stderr.len() == 1 && done.stderr[0].starts_with(&usage),
            "{name}: expected one usage line: {all}"
        );
    }
}

#[test]
fn examples_report_a_port_in_use_in_one_line_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for name in EXAMPLES {
        let done =
            Server::run_program(&example(name).unwrap(), &[&port, "127.0.0.1"], TIMEOUT).unwrap();
        let expected =
            format!("error: cannot bind 127.0.0.1:{port}: Address already in use (os error 98)");
        let all = done.stderr.join("\n");
        assert_eq!(done.status.code(), Some(1), "{name} exited with {}: {all}", done.status);
        assert_eq!(done.stderr, [expected], "{name}");
    }
}

#[test]
fn each_example_has_at_most_40_lines_of_code() {
    let dir = workspace_root().join("crates/forkserve/examples");
    let mut counts = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            counts.push((name, code_lines(&std::fs::read_to_string(&path).unwrap())));
        }
    }
    counts.sort();
    for name in EXAMPLES {
        assert!(counts.iter().any(|(n, _)| n == name), "{name}.rs not in {}", dir.display());
    }
    let long: Vec<_> = counts.iter().filter(|(_, lines)| *lines > MAX_CODE_LINES).collect();
    assert!(long.is_empty(), "examples over {MAX_CODE_LINES} lines of code: {long:?}");
}

/// Lines of code: not blank, not a `//` comment (`//!` and `///` included),
/// not an inner attribute (`#![…]`).
fn code_lines(source: &str) -> usize {
    source
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//") && !line.starts_with("#!"))
        .count()
}

#[test]
fn code_lines_skip_blanks_comments_and_inner_attributes() {
    let source =
        "//! Doc.\n#![allow(x)]\n\n    // note\n/// item\nfn main() {\n    f(); // call\n}\n";
    assert_eq!(code_lines(source), 3);
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Parses an HTTP-date in its one current form, IMF-fixdate (RFC 9110):
/// `Sat, 28 Nov 2026 13:41:45 GMT`, with fixed-width numbers and a weekday
/// that matches the date. Returns seconds since the Unix epoch.
fn parse_http_date(text: &str) -> Result<i64, String> {
    let bad = |what: &str| format!("{text:?} is not an HTTP-date: bad {what}");
    let fields: Vec<&str> = text.split(' ').collect();
    let [weekday, day, month, year, time, zone] = fields[..] else {
        return Err(bad("number of fields"));
    };
    let weekday = weekday.strip_suffix(',').and_then(|w| WEEKDAYS.iter().position(|&d| d == w));
    let weekday = weekday.ok_or_else(|| bad("weekday"))?;
    let month = MONTHS.iter().position(|&m| m == month).ok_or_else(|| bad("month"))?;
    let month = i64::try_from(month).unwrap() + 1;
    let year = digits(year, 4).ok_or_else(|| bad("year"))?;
    let day = digits(day, 2).filter(|&d| (1..=days_in_month(year, month)).contains(&d));
    let day = day.ok_or_else(|| bad("day"))?;
    let hms: Vec<Option<i64>> = time.split(':').map(|t| digits(t, 2)).collect();
    let [Some(hour @ 0..24), Some(minute @ 0..60), Some(second @ 0..60)] = hms[..] else {
        return Err(bad("time"));
    };
    if zone != "GMT" {
        return Err(bad("zone"));
    }
    let days = days_from_civil(year, month, day);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    if usize::try_from((days + 3).rem_euclid(7)).unwrap() != weekday {
        return Err(bad("weekday for the date"));
    }
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// `text` as a number, if it is exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok())?
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// How many days `month` (1 to 12) of `year` has.
fn days_in_month(year: i64, month: i64) -> i64 {
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)
}

/// The UTC year of an instant given in seconds since the Unix epoch.
fn year_of(unix_secs: i64) -> i64 {
    // The last year whose first day is not after the instant's day.
    let day = unix_secs.div_euclid(86_400);
    let mut year = 1970 + day.div_euclid(366);
    while days_from_civil(year + 1, 1, 1) <= day {
        year += 1;
    }
    year
}

#[test]
fn http_dates_are_parsed_strictly() {
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Ok(0));
    assert_eq!(parse_http_date("Sat, 28 Nov 2026 13:41:45 GMT"), Ok(1_795_873_305));
    assert_eq!(parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT"), Ok(1_709_251_199));
    for wrong in [
        "Fri, 28 Nov 2026 13:41:45 GMT",
        "Sat, 28 Nov 2026 13:41:45 UTC",
        "Sat 28 Nov 2026 13:41:45 GMT",
        "Sat, 28 Nov 26 13:41:45 GMT",
        "Sat, 28 nov 2026 13:41:45 GMT",
        "Sat, 28 Nov 2026 24:41:45 GMT",
        "Sat, 28 Nov 2026 13:41 GMT",
        "Sat, 28 Nov 2026 13:41:45 GMT ",
        "Sun, 31 Nov 2026 13:41:45 GMT",
        "Sat, 8 Nov 2026 13:41:45 GMT",
        "Saturday, 28-Nov-26 13:41:45 GMT",
    ] {
        assert!(parse_http_date(wrong).is_err(), "{wrong:?} was accepted");
    }
    assert_eq!(
        [0, 946_684_799, 946_684_800, 1_709_251_199, 1_795_873_305].map(year_of),
        [1970, 1999, 2000, 2024, 2026]
    );
}
