//! Echoing: three concurrent clients as in the seed, binary payloads, both
//! client modes.

use std::time::Duration;

use integration_tests::{Client, TIMEOUT, procfs};

use crate::{ipv6_or_skip, loopbacks, payload, server};

#[test]
fn three_concurrent_clients_get_their_lines_and_four_processes_show() {
    for ip in loopbacks() {
        let server = server(ip, &[]);
        let mut clients: Vec<Client> =
            (0..3).map(|_| Client::connect(server.addr(), &["--mode", "lines"]).unwrap()).collect();
        let mut expected: Vec<Vec<u8>> = vec![Vec::new(); 3];
        for (i, client) in clients.iter_mut().enumerate() {
            let line = format!("hello from client {i} over {ip}\n");
            client.send(line.as_bytes()).unwrap();
            expected[i].extend_from_slice(line.as_bytes());
            assert_eq!(client.wait_for_output(expected[i].len(), TIMEOUT).unwrap(), expected[i]);
        }
        // The parent and one child per client, exactly, and no zombie.
        server.wait_for_children(3, TIMEOUT).unwrap();
        assert_eq!(procfs::process_count(server.pid()), 4);

        for (i, client) in clients.iter_mut().enumerate() {
            let line = format!("second line, \0binary\x7f, from {i}\n");
            client.send(line.as_bytes()).unwrap();
            expected[i].extend_from_slice(line.as_bytes());
            assert_eq!(client.wait_for_output(expected[i].len(), TIMEOUT).unwrap(), expected[i]);
        }
        // The server logs each client's data tagged with that client's address.
        for (i, client) in clients.iter().enumerate() {
            let peer = client.local_addr().unwrap().to_string();
            let tag = format!("peer={peer}");
            server
                .wait_for_log(&[&tag, "received", &format!("from client {i}")], 1, TIMEOUT)
                .unwrap();
        }
        for mut client in clients {
            client.close_input();
            let done = client.finish(TIMEOUT).unwrap();
            assert!(done.status.success(), "client failed: {:?}", done.stderr);
        }
        server.wait_for_log(&["child exited with status 0"], 3, TIMEOUT).unwrap();
        server.wait_for_children(0, TIMEOUT).unwrap();
        assert_eq!(procfs::process_count(server.pid()), 1);
    }
}

#[test]
fn a_mebibyte_of_random_binary_is_echoed_byte_exact() {
    for ip in loopbacks() {
        let server = server(ip, &[]);
        let data = payload(1 << 20, 42);
        let port = server.addr().port().to_string();
        // Piped stdin: the default mode streams.
        let done = Client::run(&[ip, &port], &data, TIMEOUT).unwrap();
        assert!(done.status.success(), "client failed: {:?}", done.stderr);
        assert!(done.stdout == data, "echo differs ({} bytes back)", done.stdout.len());
        let tag = format!("received={}", data.len());
        server.wait_for_log(&["peer closed the connection", &tag], 1, TIMEOUT).unwrap();
    }
}

#[test]
fn stream_mode_survives_input_larger_than_all_socket_buffers() {
    // 32 MiB both ways at once: a client that wrote everything before reading
    // would deadlock here once the socket and pipe buffers filled.
    let server = server("127.0.0.1", &[]);
    let data = payload(32 << 20, 7);
    let port = server.addr().port().to_string();
    let done =
        Client::run(&["127.0.0.1", &port, "--mode", "stream"], &data, Duration::from_secs(60))
            .unwrap();
    assert!(done.status.success(), "client failed: {:?}", done.stderr);
    assert_eq!(done.stdout.len(), data.len());
    assert!(done.stdout == data, "echo differs");
}

#[test]
fn lines_mode_echoes_each_line_and_a_last_line_without_newline() {
    let server = server("127.0.0.1", &[]);
    let port = server.addr().port().to_string();
    let input = b"one\n\ntwo \xff\x00\nlast line has no newline";
    let done = Client::run(&["127.0.0.1", &port, "--mode", "lines"], input, TIMEOUT).unwrap();
    assert!(done.status.success(), "client failed: {:?}", done.stderr);
    assert_eq!(done.stdout, input);
}

#[test]
fn empty_input_is_a_clean_session() {
    let server = server("127.0.0.1", &[]);
    let port = server.addr().port().to_string();
    for mode in ["lines", "stream"] {
        let done = Client::run(&["127.0.0.1", &port, "--mode", mode], b"", TIMEOUT).unwrap();
        assert!(done.status.success(), "{mode}: {:?}", done.stderr);
        assert!(done.stdout.is_empty());
    }
    server.wait_for_log(&["child exited with status 0"], 2, TIMEOUT).unwrap();
}

#[test]
fn one_server_listens_on_ipv4_and_ipv6_on_the_same_port() {
    if !ipv6_or_skip() {
        return;
    }
    let server = server("127.0.0.1", &["--bind", "::1"]);
    let port = server.addr().port();
    server.wait_for_log(&[&format!("listening on [::1]:{port}")], 1, TIMEOUT).unwrap();
    for ip in ["127.0.0.1", "::1"] {
        let port = port.to_string();
        let done = Client::run(&[ip, &port], ip.as_bytes(), TIMEOUT).unwrap();
        assert!(done.status.success(), "{ip}: {:?}", done.stderr);
        assert_eq!(done.stdout, ip.as_bytes());
    }
    server.wait_for_log(&["child exited with status 0"], 2, TIMEOUT).unwrap();
}

#[test]
fn lines_mode_handles_megabytes_with_long_and_short_lines() {
    let server = server("127.0.0.1", &[]);
    let port = server.addr().port().to_string();
    // 4 MiB of binary with newlines here and there, including a 1 MiB stretch
    // without any: the client sends it in bounded pieces, in lockstep.
    let mut input = payload(3 << 20, 99);
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    let done =
        Client::run(&["127.0.0.1", &port, "--mode", "lines"], &input, Duration::from_secs(60))
            .unwrap();
    assert!(done.status.success(), "client failed: {:?}", done.stderr);
    assert!(done.stdout == input, "echo differs ({} of {} bytes)", done.stdout.len(), input.len());
}

#[test]
fn lines_mode_does_not_hang_on_a_server_that_sends_without_reading() {
    use std::io::Write;
    // Not an echo server: it floods 64 MiB (far more than socket buffers
    // hold), never reads, then closes. A client blocked sending would stop
    // reading too, and both sides would wait forever.
    let flood = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = flood.local_addr().unwrap().port().to_string();
    let flooder = std::thread::spawn(move || {
        let (mut conn, _) = flood.accept().unwrap();
        conn.set_write_timeout(Some(TIMEOUT + TIMEOUT)).unwrap();
        let _ = conn.write_all(&vec![b'!'; 64 << 20]);
    });
    let input = vec![b'a'; 8 << 20];
    let done = Client::run(&["127.0.0.1", &port, "--mode", "lines"], &input, TIMEOUT).unwrap();
    flooder.join().unwrap();
    assert_eq!(done.status.code(), Some(1), "{:?}", done.stderr);
    // It kept printing while its own sending was stuck (the close ends in a
    // reset, which may discard the tail, so not all 8 MiB need arrive).
    assert!(done.stdout.len() > 1 << 20, "only {} bytes printed", done.stdout.len());
    assert_eq!(done.stderr.iter().filter(|l| l.starts_with("error:")).count(), 1);
}
