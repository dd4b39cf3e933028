//! Scale-out behind a real HAProxy: two `oneloop serve --proxy-protocol` instances behind one
//! HAProxy in `mode tcp`, which opens every backend connection with a PROXY v2 header
//! (`send-proxy-v2`) and checks each instance every 200 ms with a connection that carries a v2
//! LOCAL header (`check-send-proxy`). The configuration is generated per test into a directory of
//! its own (`docs/DEPLOY.md` explains each line of the same configuration).
//!
//! What is shown, from the outside only (the wire, HAProxy's stats socket, exit codes):
//!
//! * connections are spread over both instances: each instance runs in its own time zone, so
//!   every timestamp reply names the instance that stamped it;
//! * each instance sees the real client address: a chat member that joined through HAProxy is
//!   named by its own address, the one its socket's `local_addr()` gives, not by HAProxy's;
//! * when one instance gets SIGTERM, HAProxy's health check marks it down within a bounded time
//!   and every connection made from then on is served by the other;
//! * the guide's own `haproxy.cfg` is one HAProxy accepts (`haproxy -c`);
//! * with both instances on one chat bus (a real `redis-server`), members that HAProxy sends to
//!   different instances are in one room, and a chat load through HAProxy is clean.
//!
//! Without HAProxy (Debian: `apt-get install haproxy`), or Redis for the chat bus tests
//! (`apt-get install redis-server`), each test skips, saying so in one line;
//! `.ci/run` installs it and sets `ONELOOP_TEST_REQUIRE_TOOLS=1`, under which they fail instead:
//! there, scale-out is proven with the real balancer.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use util::{parse_ctime, RedisServer, Server, DEADLINE, STAMP_LEN};

/// The two instances, as HAProxy's configuration names them, and the time zone each one runs
/// in (POSIX `TZ`): UTC, and six hours ahead of it. A timestamp reply's hour says which one
/// answered.
const INSTANCES: [(&str, &str, i64); 2] = [("a", "UTC0", 0), ("b", "XYZ-6", 6)];

/// HAProxy's health-check interval, and so the unit of its reaction time.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How long HAProxy may take to mark a stopped instance down: `fall 1` at a 200 ms interval
/// means one failed check, within about 200 ms; the rest is room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// HAProxy itself.

/// The configuration the tests run: the one `docs/DEPLOY.md` explains line by line, with
/// loopback addresses, a stats socket for the tests to read HAProxy's view of the instances, the
/// log on stderr, and a 200 ms check interval so that a failover takes a fraction of a second.
fn config(frontend: SocketAddr, backends: &[SocketAddr; 2], stats: &Path) -> String {
    let [a, b] = backends;
    format!(
        "\
global
    nbthread 1
    stats socket {stats} mode 600 level user
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch

listen oneloop
    bind {frontend}
    balance roundrobin
    default-server send-proxy-v2 check check-send-proxy inter {inter}ms fall 1 rise 1
    server {name_a} {a}
    server {name_b} {b}
",
        stats = stats.display(),
        inter = CHECK_INTERVAL.as_millis(),
        name_a = INSTANCES[0].0,
        name_b = INSTANCES[1].0,
    )
}

/// A port that was free a moment ago: bound to port 0, then released. Another process may take
/// it before HAProxy binds it, so [`Balancer::start`] retries with another when the bind fails.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a port-0 listener on 127.0.0.1")
}

/// Gives each balancer's directory a unique name within this test process.
static NEXT_BALANCER: AtomicUsize = AtomicUsize::new(0);

/// A running `haproxy -db -f DIR/haproxy.cfg` (foreground, one process), its directory (the
/// configuration, the stats socket, its stderr), killed by its PID and removed when dropped.
struct Balancer {
    child: Child,
    dir: PathBuf,
    /// Where clients connect: HAProxy's frontend.
    addr: SocketAddr,
}

impl Balancer {
    /// Starts HAProxy (`binary`) in front of `backends` and waits until its stats socket answers
    /// (it binds every listener before it serves any). A frontend port taken meanwhile by another
    /// process is replaced by a fresh one, a few times.
    fn start(binary: &Path, backends: &[SocketAddr; 2]) -> Balancer {
        let dir = std::env::temp_dir().join(format!(
            "oneloop-haproxy-{}-{}",
            std::process::id(),
            NEXT_BALANCER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create the balancer's directory");
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let addr = free_port();
            let cfg = dir.join("haproxy.cfg");
            fs::write(&cfg, config(addr, backends, &dir.join("stats.sock")))
                .expect("write haproxy.cfg");
            let stderr = fs::File::create(dir.join("stderr")).expect("create haproxy's stderr");
            let child = Command::new(binary)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
            let mut balancer = Balancer {
                child,
                dir: dir.clone(),
                addr,
            };
            let deadline = Instant::now() + DEADLINE;
            loop {
                if let Some(status) = balancer.child.try_wait().expect("try_wait haproxy") {
                    let stderr = balancer.stderr();
                    if stderr.contains("cannot bind") && attempt < ATTEMPTS {
                        break; // Taken meanwhile: drop this one and try another port.
                    }
                    panic!("haproxy exited with {status} at start; stderr:\n{stderr}");
                }
                if balancer.try_stats().is_ok() {
                    return balancer;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy's stats socket did not answer within {DEADLINE:?}; stderr:\n{}",
                    balancer.stderr()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        unreachable!("the last attempt returns or panics");
    }

    /// Everything HAProxy has written on stderr (its warnings, alerts and `tcplog` lines).
    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// `show stat` on the stats socket: one CSV line per proxy and server, after a `# ` header.
    fn try_stats(&self) -> io::Result<String> {
        let mut socket = UnixStream::connect(self.dir.join("stats.sock"))?;
        socket.set_read_timeout(Some(DEADLINE))?;
        socket.write_all(b"show stat\n")?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// The `field` column of backend server `server` in `show stat` (`status`: `UP`, `DOWN`, ...;
    /// `stot`: connections it was given).
    fn server_stat(&self, server: &str, field: &str) -> String {
        let stats = self
            .try_stats()
            .unwrap_or_else(|e| panic!("haproxy's stats socket: {e}"));
        let mut lines = stats.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no `# ` header in show stat:\n{stats}"))
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|&h| h == name)
                .unwrap_or_else(|| panic!("no {name} column in show stat:\n{stats}"))
        };
        let (proxy, name, wanted) = (column("pxname"), column("svname"), column(field));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|row| row.get(proxy) == Some(&"oneloop") && row.get(name) == Some(&server))
            .and_then(|row| row.get(wanted).map(|value| value.to_string()))
            .unwrap_or_else(|| panic!("no server oneloop/{server} in show stat:\n{stats}"))
    }

    /// Waits until HAProxy's health checks give server `server` the status `status` (`UP`,
    /// `DOWN`), for at most `within`; returns how long it took.
    fn wait_for_status(&self, server: &str, status: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let now = self.server_stat(server, "status");
            if now == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "haproxy still has {server} {now}, not {status}, after {within:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only (`-db`: HAProxy runs as one process), then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Two instances behind it.

/// Two `oneloop serve PROTOCOL@127.0.0.1:0 --proxy-protocol` instances, each in its own time
/// zone ([`INSTANCES`]), and HAProxy in front of them, both marked up by its health checks.
/// `None` (after the skip line) without HAProxy.
struct Pair {
    instances: [Server; 2],
    balancer: Balancer,
}

impl Pair {
    fn start(protocol: &str) -> Option<Pair> {
        let binary = util::require_tool("haproxy")?;
        let service = format!("{protocol}@127.0.0.1:0");
        let instances = INSTANCES.map(|(_, tz, _)| {
            Server::start_with_env(&[&service, "--proxy-protocol"], &[("TZ", tz)])
        });
        Some(Pair::balanced(&binary, protocol, instances))
    }

    /// Two chat instances on the chat bus `bus`, one room: a chat room is named by its port, so
    /// the second listens on 127.0.0.2 at the port the first (on 127.0.0.1) was given.
    fn start_on_bus(bus: &str) -> Option<Pair> {
        let binary = util::require_tool("haproxy")?;
        let common = ["--proxy-protocol", "--chat-bus", bus];
        let (a_tz, b_tz) = (INSTANCES[0].1, INSTANCES[1].1);
        let a = Server::start_with_env(
            &[&["chat@127.0.0.1:0"], &common[..]].concat(),
            &[("TZ", a_tz)],
        );
        let b_service = format!("chat@127.0.0.2:{}", a.addr("chat").port());
        let b = Server::start_with_env(
            &[&[b_service.as_str()], &common[..]].concat(),
            &[("TZ", b_tz)],
        );
        Some(Pair::balanced(&binary, "chat", [a, b]))
    }

    /// HAProxy in front of `instances`, both marked up by its health checks.
    fn balanced(binary: &Path, protocol: &str, instances: [Server; 2]) -> Pair {
        let backends = [instances[0].addr(protocol), instances[1].addr(protocol)];
        let balancer = Balancer::start(binary, &backends);
        for (name, _, _) in INSTANCES {
            balancer.wait_for_status(name, "UP", DEADLINE);
        }
        Pair {
            instances,
            balancer,
        }
    }

    /// Panics with both instances' and HAProxy's stderr if `condition` does not hold.
    fn check(&self, condition: bool, what: impl FnOnce() -> String) {
        if !condition {
            panic!(
                "{}\n--- instance a stderr:\n{}\n--- instance b stderr:\n{}\n--- haproxy stderr:\n{}",
                what(),
                self.instances[0].stderr(),
                self.instances[1].stderr(),
                self.balancer.stderr()
            );
        }
    }
}

/// One timestamp request on a new connection through `addr`: the index in [`INSTANCES`] of the
/// instance that stamped it, told by the time zone of its stamp. An error says what went wrong
/// (HAProxy closes a client whose backend connection failed; that is how a failure shows).
fn stamp_through(addr: SocketAddr) -> Result<usize, String> {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)
        .map_err(|e| format!("connect to haproxy at {addr}: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"which\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = [0; 256];
    while !reply.ends_with(b"\n") {
        if Instant::now() >= deadline {
            return Err(format!("no whole reply within {DEADLINE:?}: {reply:?}"));
        }
        match stream.read(&mut buffer) {
            Ok(0) => {
                return Err(format!(
                    "closed after {:?} instead of a reply",
                    String::from_utf8_lossy(&reply)
                ))
            }
            Ok(count) => reply.extend_from_slice(&buffer[..count]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let now_utc = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if reply.len() != STAMP_LEN + b"which\n".len() || !reply.ends_with(b"] which\n") {
        return Err(format!("not a timestamp reply: {reply:?}"));
    }
    let stamp = parse_ctime(&reply[1..25])?;
    // The stamp's local time minus UTC, in whole hours: the zone of the instance that stamped it.
    let hours = (stamp.local_seconds - now_utc + 1800).div_euclid(3600);
    INSTANCES
        .iter()
        .position(|&(_, _, zone)| zone == hours)
        .ok_or_else(|| format!("a stamp {hours} h from UTC, no instance's zone: {reply:?}"))
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The `haproxy.cfg` of `docs/DEPLOY.md` (its one ```` ```haproxy ```` block) is one HAProxy
/// accepts: `haproxy -c` parses it whole, resolves its user and group, and checks every line.
#[test]
fn the_deploy_guide_configuration_is_valid() {
    let Some(binary) = util::require_tool("haproxy") else {
        return;
    };
    let guide = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DEPLOY.md");
    let guide = fs::read_to_string(&guide).expect("read docs/DEPLOY.md");
    let blocks: Vec<&str> = guide
        .split("\n```haproxy\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().unwrap())
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "docs/DEPLOY.md should hold one ```haproxy block"
    );
    let path = std::env::temp_dir().join(format!("oneloop-deploy-{}.cfg", std::process::id()));
    fs::write(&path, format!("{}\n", blocks[0])).expect("write the guide's haproxy.cfg");
    let output = Command::new(&binary)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run haproxy -c");
    let _ = fs::remove_file(&path);
    assert!(
        output.status.success(),
        "haproxy -c rejects the guide's haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn connections_are_spread_over_both_instances() {
    let Some(mut pair) = Pair::start("timestamp") else {
        return;
    };
    const CONNECTIONS: usize = 20;
    let mut served = [0; 2];
    for _ in 0..CONNECTIONS {
        match stamp_through(pair.balancer.addr) {
            Ok(instance) => served[instance] += 1,
            Err(e) => pair.check(false, || format!("a request through haproxy failed: {e}")),
        }
    }
    // Round robin alternates: 10 each. Allow a little slack, none for an idle instance.
    pair.check(served.iter().all(|&n| n >= CONNECTIONS / 2 - 2), || {
        format!("{CONNECTIONS} connections were served {served:?} by instances a and b")
    });
    // HAProxy counts the same: each connection went to the instance that stamped it.
    for (index, (name, _, _)) in INSTANCES.iter().enumerate() {
        let given = pair.balancer.server_stat(name, "stot");
        pair.check(given == served[index].to_string(), || {
            format!(
                "haproxy gave {name} {given} connections; its stamps say {}",
                served[index]
            )
        });
    }
    for instance in &mut pair.instances {
        instance.assert_running();
    }
}

/// A chat member connected through HAProxy, read line by line within [`DEADLINE`].
struct Member {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// This end's own address: the client's real address, as HAProxy sees it.
    local: String,
}

impl Member {
    /// Connects through `addr` and reads the greeting: `* welcome NAME; N members here; ...`.
    /// Returns the member and NAME.
    fn join(addr: SocketAddr) -> (Member, String) {
        let stream = util::connect(addr);
        let local = stream.local_addr().unwrap().to_string();
        let mut member = Member {
            stream,
            buffer: Vec::new(),
            local,
        };
        let greeting = member.line();
        let name = greeting
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.split_once("; "))
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| panic!("not a greeting: {greeting:?}"));
        (member, name)
    }

    fn say(&mut self, text: &str) {
        util::send(&mut self.stream, format!("{text}\n").as_bytes());
    }

    /// The next line, without its `\n`.
    fn line(&mut self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=newline).collect();
                return String::from_utf8_lossy(&line[..newline]).into_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no whole line within {DEADLINE:?}; got {:?}",
                self.local,
                String::from_utf8_lossy(&self.buffer)
            );
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("{}: the room closed the connection", self.local),
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("{}: read: {e}", self.local),
            }
        }
    }

    /// Reads lines up to the first that `last` accepts, and returns the ones before it and it.
    /// Bounded by [`DEADLINE`] overall, not only per line: HAProxy's health checks join and
    /// leave the room every 200 ms, so lines keep coming even when the awaited one never does.
    fn lines_until(&mut self, last: impl Fn(&str) -> bool) -> (Vec<String>, String) {
        let deadline = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if last(&line) {
                return (before, line);
            }
            before.push(line);
            assert!(
                Instant::now() < deadline,
                "{}: no awaited line within {DEADLINE:?}; received {before:?}",
                self.local
            );
        }
    }
}

#[test]
fn each_instance_sees_the_real_client_address() {
    let Some(pair) = Pair::start("chat") else {
        return;
    };
    // Round robin puts members 0 and 2 in one instance's room, 1 and 3 in the other's.
    let mut members = Vec::new();
    for _ in 0..4 {
        let (member, name) = Member::join(pair.balancer.addr);
        pair.check(name == member.local, || {
            format!(
                "a member connected from {} through haproxy (at {}) was named {name}: the \
                 instance must name it by the address in the PROXY header, the client's own",
                member.local, pair.balancer.addr
            )
        });
        members.push(member);
    }
    let ours: BTreeSet<String> = members.iter().map(|m| m.local.clone()).collect();

    // Each member's room, as `/who` lists it. HAProxy's health checks are connections too: a
    // check that happens to be in the room is listed (and announced as joining and leaving)
    // under HAProxy's own address, so only our members' names are kept.
    let mut rooms = Vec::new();
    let mut joins_seen = Vec::new();
    for member in &mut members {
        member.say("/who");
        let (before, who) = member.lines_until(|line| line.starts_with("* members: "));
        let room: BTreeSet<String> = who["* members: ".len()..]
            .split(", ")
            .filter(|name| ours.contains(*name))
            .map(str::to_string)
            .collect();
        pair.check(room.contains(&member.local), || {
            format!("{} is not in its own room's /who: {who:?}", member.local)
        });
        let joined: BTreeSet<String> = before
            .iter()
            .filter_map(|line| line.strip_prefix("* ")?.strip_suffix(" joined"))
            .filter(|name| ours.contains(*name))
            .map(str::to_string)
            .collect();
        rooms.push(room);
        joins_seen.push(joined);
    }
    // Two rooms, one per instance, splitting our members between them: each instance named the
    // members it served by their real addresses.
    let distinct: BTreeSet<&BTreeSet<String>> = rooms.iter().collect();
    pair.check(
        distinct.len() == 2 && distinct.iter().map(|room| room.len()).sum::<usize>() == 4,
        || format!("the members' rooms are {rooms:?}: not two instances' rooms splitting them"),
    );
    // Every earlier member of a room saw each later one join under its real address.
    for (index, member) in members.iter().enumerate() {
        let later: BTreeSet<String> = members[index + 1..]
            .iter()
            .map(|m| m.local.clone())
            .filter(|name| rooms[index].contains(name))
            .collect();
        pair.check(joins_seen[index] == later, || {
            format!(
                "{} saw {:?} join; its later room-mates are {later:?}",
                member.local, joins_seen[index]
            )
        });
    }
    // And a line reaches a room-mate as `ADDRESS: LINE`, with the sender's real address.
    let (first, second) = members.split_at_mut(1);
    let sender = &mut first[0];
    let Some(mate) = second.iter_mut().find(|m| rooms[0].contains(&m.local)) else {
        panic!("the first member has no room-mate: rooms {rooms:?}");
    };
    sender.say("hello from behind haproxy");
    let expected = format!("{}: hello from behind haproxy", sender.local);
    let (_, line) = mate.lines_until(|line| !line.starts_with("* "));
    pair.check(line == expected, || {
        format!("{} got {line:?}, expected {expected:?}", mate.local)
    });
}

#[test]
fn when_one_instance_stops_the_other_serves_every_new_connection() {
    let Some(mut pair) = Pair::start("timestamp") else {
        return;
    };
    let addr = pair.balancer.addr;
    // Both serve before the stop.
    let mut served = [0; 2];
    for _ in 0..4 {
        match stamp_through(addr) {
            Ok(instance) => served[instance] += 1,
            Err(e) => pair.check(false, || format!("a request before the stop failed: {e}")),
        }
    }
    pair.check(served.iter().all(|&n| n > 0), || {
        format!("before the stop, 4 connections were served {served:?} by a and b")
    });

    // SIGTERM to b. Clients keep connecting, one after another, while HAProxy notices.
    let (stopped, survivor) = (1, 0);
    let stopped_name = INSTANCES[stopped].0;
    let sigterm = Instant::now();
    pair.instances[stopped].signal("TERM");
    let mut in_window = Vec::new();
    let window = loop {
        let status = pair.balancer.server_stat(stopped_name, "status");
        if status == "DOWN" {
            break sigterm.elapsed();
        }
        pair.check(sigterm.elapsed() < FAILOVER_BOUND, || {
            format!("haproxy still has {stopped_name} {status} {FAILOVER_BOUND:?} after SIGTERM")
        });
        in_window.push(stamp_through(addr));
    };
    let status = pair.instances[stopped].wait_for_exit();
    pair.check(status.success(), || {
        format!("the stopped instance exited with {status}")
    });

    // From then on, every new connection is served, and by the survivor.
    const AFTER: usize = 30;
    for attempt in 0..AFTER {
        let result = stamp_through(addr);
        pair.check(result == Ok(survivor), || {
            format!(
                "connection {attempt} after haproxy marked {stopped_name} down ({window:?} after \
                 SIGTERM): {result:?}"
            )
        });
    }
    pair.instances[survivor].assert_running();
    let failed = in_window.iter().filter(|r| r.is_err()).count();
    eprintln!(
        "{stopped_name} marked down {window:?} after SIGTERM; {} connections in that window, \
         {failed} failed; {AFTER} after it, all served by {}",
        in_window.len(),
        INSTANCES[survivor].0
    );
}

// ---------------------------------------------------------------------------------------------
// Both instances on one chat bus.

/// A real Redis and two `--chat-bus` instances behind HAProxy; `None` (after the skip line)
/// without Redis or HAProxy. Redis is returned too: it must outlive the instances.
fn bus_pair() -> Option<(RedisServer, Pair)> {
    if !util::require_tools(&["redis-server", "haproxy"]) {
        return None;
    }
    let redis = RedisServer::start()?;
    let pair = Pair::start_on_bus(&redis.url())?;
    // Each instance has reached Redis before a test's member can meet it (HAProxy would pass
    // on its `error chat unavailable`). A PROXY header as HAProxy's, from a made-up client.
    for instance in &pair.instances {
        let addr = instance.addr("chat");
        let header = format!("PROXY TCP4 192.0.2.9 127.0.0.1 9 {}\r\n", addr.port());
        util::wait_until_chat_greets(addr, header.as_bytes());
    }
    Some((redis, pair))
}

/// Round robin sends two members to different instances; on one bus they are still in one
/// room (HAProxy's `stot` says which instance got which). HAProxy's health checks are members
/// too, joining and leaving, so their notices are skipped.
#[test]
fn members_on_different_instances_behind_haproxy_share_one_room_on_one_bus() {
    let Some((_redis, pair)) = bus_pair() else {
        return;
    };
    let addr = pair.balancer.addr;
    let (mut first, first_name) = Member::join(addr);
    let (mut second, second_name) = Member::join(addr);
    for (name, _, _) in INSTANCES {
        let given = pair.balancer.server_stat(name, "stot");
        pair.check(given == "1", || {
            format!("haproxy gave {name} {given} of the 2 members: not one each")
        });
    }
    let joined = format!("* {second_name} joined");
    first.lines_until(|line| line == joined);

    second.say("across instances");
    let expected = format!("{second_name}: across instances");
    let (skipped, line) = first.lines_until(|line| !line.starts_with("* "));
    pair.check(line == expected, || {
        format!("{first_name} got {line:?} (after {skipped:?}), expected {expected:?}")
    });
    first.say("and back");
    let expected = format!("{first_name}: and back");
    let (skipped, line) = second.lines_until(|line| !line.starts_with("* "));
    pair.check(line == expected, || {
        format!("{second_name} got {line:?} (after {skipped:?}), expected {expected:?}")
    });

    second.say("/who");
    let (_, who) = second.lines_until(|line| line.starts_with("* members: "));
    let names: BTreeSet<&str> = who["* members: ".len()..].split(", ").collect();
    pair.check(
        names.contains(first_name.as_str()) && names.contains(second_name.as_str()),
        || format!("/who on {second_name}'s instance: {who:?}"),
    );
}

/// `oneloop load --protocol chat` through HAProxy's frontend, its members spread over two
/// instances on one bus, is clean: one room, every line delivered once, in one order.
#[test]
fn a_chat_load_through_haproxy_over_one_bus_is_clean() {
    let Some((_redis, mut pair)) = bus_pair() else {
        return;
    };
    let frontend = pair.balancer.addr.to_string();
    let run = util::run(
        &[
            "load",
            &frontend,
            "--protocol",
            "chat",
            "--connections",
            "40",
            "--senders",
            "5",
            "--duration",
            "3",
            "--json",
        ],
        b"",
    );
    pair.check(run.status.success(), || {
        format!(
            "load through haproxy exited {:?}\nstdout: {}\nstderr: {}",
            run.status, run.stdout, run.stderr
        )
    });
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim_end())
        .unwrap_or_else(|e| panic!("the load's stdout is not JSON ({e}): {:?}", run.stdout));
    for (key, expected) in [("errors", 0.0), ("dropped", 0.0), ("established", 40.0)] {
        pair.check(json[key].as_f64() == Some(expected), || {
            format!("{key} is not {expected} in the load's JSON: {json}")
        });
    }
    for (name, _, _) in INSTANCES {
        let given: usize = pair.balancer.server_stat(name, "stot").parse().unwrap();
        pair.check(given >= 10, || {
            format!("haproxy gave {name} only {given} of the 40 members")
        });
    }
    for instance in &mut pair.instances {
        instance.assert_running();
    }
}
