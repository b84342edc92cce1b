//! Least privilege on the network: with init as PID 1 of new namespaces
//! running Kata's unmodified agent unit (agent-shim as the agent) and
//! timesync with an NTP server configured, every socket of every process in
//! the PID namespace is read through pidfd_getfd(2) while they run. init
//! holds unix sockets only and listens on no network port; agent-shim
//! listens on exactly the address it was given; timesync holds one unbound-
//! port UDP client socket per server and listens on nothing. (The same
//! holds in a VM with vsock: `cargo xtask vmtest dax-q35-vsock` runs
//! agent-shim's socket self-check.)

use std::time::Duration;

use minos_tests::{binary, namespace_members, sockets_of, Rootfs, SocketInfo};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const WAIT: Duration = Duration::from_secs(60);
const AGENT_SOCKET: &str = "/run/agent-shim.sock";

fn family_name(f: u32) -> &'static str {
    match f as i32 {
        libc::AF_UNIX => "unix",
        libc::AF_INET => "inet",
        libc::AF_INET6 => "inet6",
        libc::AF_NETLINK => "netlink",
        libc::AF_VSOCK => "vsock",
        libc::AF_PACKET => "packet",
        _ => "other",
    }
}

fn show(s: &[SocketInfo]) -> String {
    s.iter()
        .map(|s| {
            format!(
                "{} pid {} fd {}: {} type {} {}{}",
                s.comm,
                s.pid,
                s.fd,
                family_name(s.family),
                s.kind,
                s.local,
                if s.listening { " LISTEN" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn init_listens_on_no_network_port_and_the_agent_only_on_its_address() {
    let fs = Rootfs::new("sockets");
    fs.unit(
        "kata-agent.service",
        include_str!("../fixtures/kata/kata-agent.service"),
    );
    let agent = fs.root.join("usr/bin/kata-agent");
    std::fs::remove_file(&agent).expect("remove the probe link");
    std::fs::copy(binary("agent-shim"), &agent).expect("copy agent-shim");
    std::fs::copy(binary("timesync"), fs.root.join("usr/bin/timesync")).expect("copy timesync");
    fs.unit(
        "timesync.service",
        include_str!("../../rootfs-skel/overlay/etc/minos/units/timesync.service"),
    );
    // Kata's two lines, and a server: the address needs nobody listening.
    fs.write(
        "etc/timesync.conf",
        &format!(
            "{}server 127.0.0.1 iburst\n",
            include_str!("../../rootfs-skel/overlay/etc/timesync.conf")
        ),
    );
    let passwd = fs.read("etc/passwd");
    fs.write(
        "etc/passwd",
        &format!("{passwd}timesync:x:101:101:minos timesync:/run/timesync:/sbin/nologin\n"),
    );
    let group = fs.read("etc/group");
    fs.write("etc/group", &format!("{group}timesync:x:101:\n"));

    let mut pid1 = fs.start_with_kernel_cmdline(
        &format!("quiet panic=1 agent.server_addr=unix://{AGENT_SOCKET}"),
        &[],
    );
    pid1.wait_for("agent-shim: ready", Duration::from_secs(20));
    // timesync's iburst has sent by then.
    std::thread::sleep(Duration::from_secs(2));
    let init = pid1.host_pid();
    let members = namespace_members(init);
    let all: Vec<SocketInfo> = members.iter().flat_map(|&p| sockets_of(p)).collect();
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let listing = show(&all);

    let of = |comm: &str| -> Vec<&SocketInfo> { all.iter().filter(|s| s.comm == comm).collect() };
    let init_sockets: Vec<&SocketInfo> = all.iter().filter(|s| s.pid == init).collect();
    assert!(
        !init_sockets.is_empty(),
        "init's control and notify sockets are missing:\n{listing}"
    );
    for s in &init_sockets {
        assert_eq!(
            s.family,
            libc::AF_UNIX as u32,
            "init holds a non-unix socket:\n{listing}"
        );
    }
    assert!(
        init_sockets
            .iter()
            .any(|s| s.listening && s.local == "/run/minos/control.sock"),
        "{listing}"
    );

    let agent = of("kata-agent");
    let listening: Vec<&&SocketInfo> = agent.iter().filter(|s| s.listening).collect();
    assert_eq!(listening.len(), 1, "{listing}\n{}", end.output);
    assert_eq!(listening[0].family, libc::AF_UNIX as u32, "{listing}");
    assert_eq!(listening[0].local, AGENT_SOCKET, "{listing}");
    assert!(
        agent.iter().all(|s| s.family == libc::AF_UNIX as u32),
        "the agent holds a socket other than its own address:\n{listing}"
    );

    let ts = of("timesync");
    let udp: Vec<&&SocketInfo> = ts
        .iter()
        .filter(|s| s.family == libc::AF_INET as u32)
        .collect();
    assert_eq!(udp.len(), 1, "one socket for the one server:\n{listing}");
    assert_eq!(udp[0].kind, libc::SOCK_DGRAM as u32, "{listing}");
    assert!(!udp[0].listening, "{listing}");
    let (low, _) = ip_local_port_range();
    let port: u16 = udp[0]
        .local
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        udp[0].local.starts_with("0.0.0.0:") && port >= low,
        "an ephemeral port on the unspecified address: {listing}"
    );
    assert!(
        ts.iter().all(|s| s.family == libc::AF_INET as u32
            || s.family == libc::AF_UNIX as u32
            || s.family == libc::AF_NETLINK as u32),
        "{listing}"
    );
    assert!(ts.iter().all(|s| !s.listening), "{listing}");

    // Nothing in the namespace listens on a network port.
    for s in &all {
        let network = [libc::AF_INET, libc::AF_INET6, libc::AF_VSOCK]
            .iter()
            .any(|&f| s.family == f as u32);
        assert!(!(network && s.listening), "{listing}");
    }
}

fn ip_local_port_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut w = text.split_whitespace().map(|n| n.parse().unwrap());
    (w.next().unwrap(), w.next().unwrap())
}
