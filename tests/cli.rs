//! The command line: exit codes and messages for bad input and bind failures, and `oneloop
//! client` against a real server.

mod util;

use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;

use util::{parse_stamped, run, Run, Server};

/// Asserts a usage error: exit code 2, a message on stderr containing `needle`, and no
/// `listening` line (nothing was served).
fn assert_usage_error(args: &[&str], needle: &str) -> Run {
    let result = run(args, b"");
    assert_eq!(
        result.code(),
        2,
        "oneloop {args:?} must be a usage error: {result:?}"
    );
    assert!(
        result.stderr.contains(needle),
        "oneloop {args:?}: stderr should mention {needle:?}: {:?}",
        result.stderr
    );
    assert!(
        !result.stdout.contains("listening"),
        "oneloop {args:?} printed a listening line: {result:?}"
    );
    result
}

#[test]
fn a_bad_service_spec_is_a_usage_error_naming_it() {
    assert_usage_error(&["serve", "bogus"], "bogus");
    assert_usage_error(&["serve", "ping@127.0.0.1:0"], "ping");
    assert_usage_error(&["serve", "echo@127.0.0.1"], "127.0.0.1");
    assert_usage_error(&["serve", "echo@127.0.0.1:99999"], "99999");
    assert_usage_error(&["serve", "echo@::1:80"], "::1:80");
    // A passed socket's name as systemd could never pass it (empty, or with a colon).
    assert_usage_error(&["serve", "upper@fd:"], "fd:");
    assert_usage_error(&["serve", "upper@fd:a:b"], "fd:a:b");
    // One bad spec among good ones refuses the whole command line.
    assert_usage_error(&["serve", "echo@127.0.0.1:0", "upper@nowhere"], "nowhere");
}

#[test]
fn bad_options_are_usage_errors() {
    assert_usage_error(
        &["serve", "--max-line", "0", "echo@127.0.0.1:0"],
        "max-line",
    );
    assert_usage_error(&["serve", "--max-line", "-5", "echo@127.0.0.1:0"], "-5");
    assert_usage_error(
        &["serve", "--output-limit", "lots", "echo@127.0.0.1:0"],
        "lots",
    );
    assert_usage_error(
        &["serve", "--no-such-option", "echo@127.0.0.1:0"],
        "no-such-option",
    );
    for delay in ["-1", "3601", "soon"] {
        assert_usage_error(
            &["serve", "--reply-delay", delay, "echo@127.0.0.1:0"],
            delay,
        );
    }
    assert_usage_error(&["frobnicate"], "frobnicate");
    assert_usage_error(&[], "Usage");
    assert_usage_error(&["client"], "ADDRESS");
    assert_usage_error(&["client", "127.0.0.1:1", "--timeout", "soon"], "soon");
}

#[test]
fn services_a_model_cannot_serve_are_refused() {
    // chat is not served by serial or forking, nor over UDP (nor is upload): refused before
    // anything is bound, so a script learns at once rather than from a missing service. (Every
    // model serves upload.)
    assert_usage_error(&["serve", "chat@udp:127.0.0.1:0"], "udp");
    assert_usage_error(&["serve", "upload@udp:127.0.0.1:0"], "udp");
    for model in ["serial", "forking"] {
        let refused = assert_usage_error(
            &["serve", "--model", model, "chat@127.0.0.1:0"],
            "cannot serve chat",
        );
        // One line saying why (contract v3), not the top-level usage of every subcommand.
        let lines: Vec<&str> = refused.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {:?}", refused.stderr);
        assert!(
            lines[0].starts_with("oneloop: chat@")
                && lines[0].contains(&format!("--model {model}")),
            "the line names the service and the model: {:?}",
            lines[0]
        );
    }
    let socket = std::env::temp_dir().join(format!("oneloop-cli-{}.sock", std::process::id()));
    let spec = format!("chat@unix:{}", socket.display());
    // Even alongside services that could be served.
    assert_usage_error(
        &["serve", "--model", "serial", "echo@127.0.0.1:0", &spec],
        "cannot serve chat",
    );
    assert!(
        !socket.exists(),
        "a refused unix service must not create its socket file"
    );
}

#[test]
fn a_port_in_use_is_a_bind_failure_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();

    let result = run(&["serve", &format!("echo@{address}")], b"");
    assert_eq!(result.code(), 1, "a bind failure exits 1: {result:?}");
    let lines: Vec<&str> = result.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", result.stderr);
    assert!(
        lines[0].contains(&address) && lines[0].contains("address already in use"),
        "the line names the address and the OS reason: {:?}",
        lines[0]
    );
    assert!(result.stdout.is_empty(), "nothing on stdout: {result:?}");

    // The taken address second, after one that binds: still exit 1, naming the taken one.
    let result = run(
        &[
            "serve",
            "upper@127.0.0.1:0",
            &format!("timestamp@{address}"),
        ],
        b"",
    );
    assert_eq!(result.code(), 1, "{result:?}");
    let lines: Vec<&str> = result.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", result.stderr);
    assert!(
        lines[0].contains(&address) && lines[0].contains("address already in use"),
        "{:?}",
        lines[0]
    );
    drop(taken);
}

#[test]
fn other_bind_failures_exit_one_naming_the_address() {
    // The same address twice in one command line: the second bind fails.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = run(
        &["serve", &format!("echo@{free}"), &format!("upper@{free}")],
        b"",
    );
    assert_eq!(result.code(), 1, "{result:?}");
    let lines: Vec<&str> = result.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", result.stderr);
    assert!(
        lines[0].contains(&free.to_string()) && lines[0].contains("address already in use"),
        "{:?}",
        lines[0]
    );

    // An address that is not this host's (TEST-NET-1, reserved for documentation).
    let result = run(&["serve", "echo@192.0.2.1:0"], b"");
    assert_eq!(result.code(), 1, "{result:?}");
    let lines: Vec<&str> = result.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", result.stderr);
    assert!(lines[0].contains("192.0.2.1:0"), "{:?}", lines[0]);
}

#[test]
fn a_host_name_is_resolved_and_the_listening_line_shows_the_address() {
    let server = Server::start(&["echo@localhost:0"]);
    let listening = &server.listening()[0];
    assert!(listening.addr.ip().is_loopback(), "{listening:?}");
    assert_ne!(listening.addr.port(), 0);
    let address = listening.addr.to_string();
    let result = run(&["client", &address, "resolved"], b"");
    assert_eq!(result.code(), 0, "{result:?}");
    assert_eq!(result.stdout, "resolved");
}

#[test]
fn sigterm_stops_the_server_with_exit_zero() {
    let mut server = Server::start(&["echo@127.0.0.1:0"]);
    let addr = server.addr("echo");
    // An idle connection is closed at once, cleanly.
    let mut idle = util::connect(addr);
    server.signal("TERM");
    let status = server.wait_for_exit();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0: {status}");
    assert_eq!(util::read_to_end_within(&mut idle), b"");
}

#[test]
fn client_with_words_prints_the_reply_and_exits_zero() {
    let server = Server::start(&["upper@127.0.0.1:0", "echo@127.0.0.1:0"]);
    let upper = server.addr("upper").to_string();
    let result = run(&["client", &upper, "Hello", "world", "123"], b"");
    assert_eq!(result.code(), 0, "{result:?}");
    assert_eq!(result.stdout, "HELLO WORLD 123");

    // `tcp:` addresses work for the client too, and --timeout does not get in the way.
    let echo = format!("tcp:{}", server.addr("echo"));
    let result = run(&["client", &echo, "--timeout", "5", "same", "words"], b"");
    assert_eq!(result.code(), 0, "{result:?}");
    assert_eq!(result.stdout, "same words");
}

#[test]
fn client_reaches_an_ipv6_server() {
    if !util::ipv6_loopback_available() {
        eprintln!("skipped: this host cannot bind [::1]");
        return;
    }
    let server = Server::start(&["upper@[::1]:0"]);
    let address = server.addr("upper").to_string();
    assert!(address.starts_with("[::1]:"), "{address}");
    let result = run(&["client", &address, "over", "ipv6"], b"");
    assert_eq!(result.code(), 0, "{result:?}");
    assert_eq!(result.stdout, "OVER IPV6");
}

#[test]
fn client_with_words_to_timestamp_prints_a_stamped_reply() {
    let server = Server::start(&["timestamp@127.0.0.1:0"]);
    let address = server.addr("timestamp").to_string();
    let result = run(&["client", &address, "hello"], b"");
    assert_eq!(result.code(), 0, "{result:?}");
    let pieces = parse_stamped(result.stdout.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pieces.len(), 1, "{:?}", result.stdout);
    assert_eq!(pieces[0].payload, b"hello");
}

#[test]
fn interactive_client_sends_stdin_lines_and_exits_at_end_of_input() {
    let server = Server::start(&["timestamp@127.0.0.1:0", "upper@127.0.0.1:0"]);

    let address = server.addr("timestamp").to_string();
    let input = "first line\nsecond line\nthird line\n";
    let result = run(&["client", &address, "--timeout", "5"], input.as_bytes());
    assert_eq!(result.code(), 0, "{result:?}");
    let pieces = parse_stamped(result.stdout.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<&[u8]> = pieces.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        payloads,
        [&b"first line\n"[..], b"second line\n", b"third line\n"],
        "{:?}",
        result.stdout
    );

    // Lines go exactly as typed; a last line without a newline is sent too.
    let address = server.addr("upper").to_string();
    let result = run(&["client", &address], "mixed Case\nno newline".as_bytes());
    assert_eq!(result.code(), 0, "{result:?}");
    assert_eq!(result.stdout, "MIXED CASE\nNO NEWLINE");
}

#[test]
fn interactive_client_prints_each_reply_while_input_is_still_open() {
    // Like `nc`: a reply appears as soon as the server sends it, not at end of input.
    let server = Server::start(&["upper@127.0.0.1:0"]);
    let address = server.addr("upper").to_string();
    let mut client = util::Interactive::start(&["client", &address]);
    client.type_in(b"first\n");
    client.expect_output_ending(b"FIRST\n");
    client.type_in(b"second line\n");
    client.expect_output_ending(b"SECOND LINE\n");
    let status = client.finish();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(client.output, b"FIRST\nSECOND LINE\n");
}

#[test]
fn client_to_a_closed_port_fails_with_exit_one() {
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }; // dropped: nothing listens there now
    let result = run(&["client", &address, "hello"], b"");
    assert_eq!(result.code(), 1, "{result:?}");
    assert!(result.stdout.is_empty(), "{result:?}");
    assert!(
        !result.stderr.trim().is_empty(),
        "a failing client says why on stderr"
    );
}

#[test]
fn client_timeout_bounds_the_wait_for_a_silent_server() {
    // A listener that accepts (the kernel completes the handshake) but never answers, and keeps
    // the connection open until the client has given up.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let (client_done, wait_for_client) = mpsc::channel::<()>();
    let holder = thread::spawn(move || {
        let (mut connection, _) = silent.accept().unwrap();
        let mut request = Vec::new();
        let _ = std::io::Read::read_to_end(&mut connection, &mut request);
        let _ = wait_for_client.recv_timeout(util::DEADLINE);
        request
    });
    let result = run(
        &["client", &address, "--timeout", "1", "anyone", "there?"],
        b"",
    );
    client_done.send(()).unwrap();
    let request = holder.join().unwrap();
    assert_eq!(
        request, b"anyone there?",
        "the words were sent before waiting"
    );
    assert_eq!(
        result.code(),
        1,
        "a silent server ends the client: {result:?}"
    );
    assert!(!result.stderr.trim().is_empty(), "{result:?}");
}

#[test]
fn send_refuses_what_it_cannot_send_as_usage_errors() {
    // An upload needs a stream, and a name must fit on the header line: one line, exit 2,
    // before anything is connected.
    let usage = assert_usage_error(&["send", "udp:127.0.0.1:9", "Cargo.toml"], "udp");
    assert_eq!(usage.stderr.lines().count(), 1, "{usage:?}");
    assert_usage_error(
        &["send", "127.0.0.1:9", "Cargo.toml", "--name", "a\nb"],
        "one line",
    );
}

/// `serve --help` states each default once: `--max-upload`'s in words (`1 GiB`), not a second
/// time as clap's `[default: 1073741824]`.
#[test]
fn serve_help_states_the_max_upload_default_once() {
    let result = run(&["serve", "--help"], b"");
    assert_eq!(result.code(), 0, "serve --help: {result:?}");
    let option = result
        .stdout
        .split("--max-upload <BYTES>")
        .nth(1)
        .expect("serve --help lists --max-upload");
    let entry = option.split("\n      --").next().unwrap();
    assert_eq!(
        entry.matches("[default:").count(),
        1,
        "one default for --max-upload: {entry:?}"
    );
    assert!(entry.contains("[default: 1 GiB]"), "{entry:?}");
}

/// A bad `load` option is reported with `load`'s usage, not the top level's.
#[test]
fn a_bad_load_option_shows_load_s_usage() {
    let result = run(&["load", "127.0.0.1:1", "--senders", "2"], b"");
    assert_eq!(result.code(), 2, "{result:?}");
    assert!(
        result.stderr.contains("Usage: oneloop load"),
        "load's usage: {:?}",
        result.stderr
    );
}
