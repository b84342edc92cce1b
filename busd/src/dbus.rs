//! The D-Bus side: each message to busd → a reply, for both modes.
//!
//! Without a bus daemon every client connection is a peer-to-peer zbus
//! server connection of its own ([`serve_peer`]) and busd answers the bus's
//! own methods (`org.freedesktop.DBus`) as well as systemd's; with a bus
//! daemon ([`serve_bus`]) busd is one client owning
//! `org.freedesktop.systemd1`. Messages are dispatched by hand rather than
//! through zbus's `ObjectServer`: unit objects come and go with the
//! cgroups, and every connection must see the same ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use zbus::connection::Builder;
use zbus::message::{Flags, Header, Type};
use zbus::names::{BusName, WellKnownName};
use zbus::zvariant::{ObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, Message, OwnedGuid};

use crate::manager::{self, AfterKill, Error, Job, Manager};
use crate::unit;

/// The unique name systemd1 has on busd's own bus.
pub const SYSTEMD_UNIQUE: &str = ":1.0";
const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";
const PEER_IFACE: &str = "org.freedesktop.DBus.Peer";
const INTROSPECT_IFACE: &str = "org.freedesktop.DBus.Introspectable";

/// How long a client may take to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// dbus-daemon's limits: a match rule's length, names one connection owns.
const MAX_RULE_LEN: usize = 1024;
const MAX_NAMES: usize = 512;
/// How long `KillUnit(SIGKILL)` waits for the scope to empty before it
/// answers (so that the unit is gone when the client next asks).
const KILL_SETTLE: Duration = Duration::from_secs(2);
/// How long `FreezeUnit`/`ThawUnit` wait for the cgroup to get there.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// `StopUnit`: SIGTERM, then SIGKILL after this long.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A signal for every connection that asked for it.
#[derive(Debug, Clone)]
pub enum Signal {
    JobRemoved(Job, &'static str),
    UnitRemoved(String),
}

/// State shared by all connections.
#[derive(Debug)]
pub struct Shared {
    manager: Mutex<Manager>,
    peers: Mutex<Peers>,
    signals: async_broadcast::Sender<Signal>,
    /// Keeps the channel open while no connection listens.
    _keep: async_broadcast::InactiveReceiver<Signal>,
    guid: OwnedGuid,
}

/// busd's own bus: its clients and the names they hold.
#[derive(Debug, Default)]
struct Peers {
    next: u64,
    /// unique name → (uid, pid)
    clients: BTreeMap<String, (u32, u32)>,
    /// well-known name → unique name
    names: BTreeMap<String, String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn new(manager: Manager) -> Arc<Self> {
        let (mut signals, rx) = async_broadcast::broadcast(64);
        // A slow client loses the oldest signals rather than stall busd.
        signals.set_overflow(true);
        Arc::new(Shared {
            _keep: rx.deactivate(),
            manager: Mutex::new(manager),
            peers: Mutex::new(Peers {
                next: 1,
                ..Peers::default()
            }),
            signals,
            guid: bus_guid(),
        })
    }

    fn manager(&self) -> MutexGuard<'_, Manager> {
        lock(&self.manager)
    }

    fn emit(&self, s: Signal) {
        // No receiver (no connection) is not an error.
        let _ = self.signals.try_broadcast(s);
    }
}

/// The bus's GUID (told to each client in the SASL handshake), made
/// without waiting for the kernel's entropy pool: zbus's
/// `Guid::generate` calls getrandom(2), which blocks until the pool is
/// initialised — in a guest early in boot without a virtio-rng device
/// (QEMU under TCG) for minutes, and busd with it. A GUID must be unique,
/// not secret: `GRND_INSECURE` bytes (never blocking), mixed with the time
/// and the pid in case that flag is refused.
fn bus_guid() -> OwnedGuid {
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` is a valid, writable buffer of exactly the length
    // passed; getrandom writes at most that many bytes into it.
    let n = unsafe {
        libc::getrandom(
            bytes.as_mut_ptr().cast(),
            bytes.len(),
            libc::GRND_INSECURE | libc::GRND_NONBLOCK,
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = now ^ (u128::from(std::process::id()) << 64);
    if usize::try_from(n).ok() != Some(bytes.len()) {
        bytes = mix.to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    zbus::Guid::try_from(hex.as_str())
        .map(OwnedGuid::from)
        .unwrap_or_else(|_| OwnedGuid::from(zbus::Guid::generate()))
}

/// Forgets scopes that empty by themselves, as systemd does when the
/// kernel says a cgroup is no longer populated: every change of a watched
/// `cgroup.events` sweeps the units. Without a watch (cgroup v1 only)
/// units are swept at each call instead.
pub async fn watch_scopes(shared: Arc<Shared>) {
    use rustix::fs::inotify;
    let fd = match inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .and_then(|fd| Ok((rustix::io::dup(&fd)?, fd)))
    {
        Ok((mine, theirs)) => {
            shared.manager().set_watch(theirs);
            mine
        }
        Err(e) => {
            log::warn!("no inotify ({e}): emptied scopes are noticed at the next call");
            return;
        }
    };
    let afd = match async_io::Async::new(fd) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("cannot poll inotify ({e}): emptied scopes are noticed at the next call");
            return;
        }
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    loop {
        if let Err(e) = afd.readable().await {
            log::warn!("inotify: {e}");
            return;
        }
        // Drain; the events themselves do not matter, only that one came.
        loop {
            let mut reader = inotify::Reader::new(afd.get_ref(), &mut buf);
            match reader.next() {
                Ok(_) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => {
                    log::warn!("inotify: {e}");
                    return;
                }
            }
        }
        let gone = shared.manager().refresh();
        for name in gone {
            shared.emit(Signal::UnitRemoved(name));
        }
    }
}

/// Who is calling, as far as the answer depends on it.
#[derive(Debug, Clone)]
struct Caller {
    uid: Option<u32>,
    /// busd's own bus: the caller's unique name (`None` before `Hello`).
    unique: Option<String>,
}

/// One connection's view: peer-to-peer (busd is the bus) or a client of a
/// bus daemon.
#[derive(Debug, Clone)]
enum Mode {
    Peer {
        rules: Arc<Mutex<Vec<MatchRule<'static>>>>,
        uid: u32,
        pid: u32,
    },
    Bus {
        uids: Arc<Mutex<HashMap<String, u32>>>,
    },
}

/// The most clients served at once on busd's own bus (dbus-daemon's
/// default per-user limit): more would let one local process hold busd's
/// descriptors until kata-agent's connection is refused.
pub const MAX_CLIENTS: usize = 256;

static CLIENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of [`MAX_CLIENTS`], given back on drop.
#[derive(Debug)]
struct ClientSlot;

impl ClientSlot {
    fn take() -> Option<Self> {
        use std::sync::atomic::Ordering;
        CLIENTS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        CLIENTS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serves one client on busd's own bus until it hangs up.
pub async fn serve_peer(shared: Arc<Shared>, stream: std::os::unix::net::UnixStream) {
    let (uid, pid) = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => (c.uid.as_raw(), c.pid.as_raw_nonzero().get().unsigned_abs()),
        Err(e) => {
            log::warn!("client without credentials refused: {e}");
            return;
        }
    };
    let who = format!("client pid {pid} uid {uid}");
    let Some(_slot) = ClientSlot::take() else {
        log::warn!("{who}: more than {MAX_CLIENTS} clients connected, refused");
        return;
    };
    let stream = match async_io::Async::new(stream) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{who}: cannot set up the connection: {e}");
            return;
        }
    };
    // busd's own SASL (see sasl.rs for why not zbus's), then zbus on an
    // authenticated socket.
    match crate::rt::timeout(
        AUTH_TIMEOUT,
        crate::sasl::handshake(&stream, uid, shared.guid.as_str()),
    )
    .await
    {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            log::warn!("{who}: authentication failed: {e}");
            return;
        }
        None => {
            log::warn!(
                "{who}: no authentication within {} s, disconnected",
                AUTH_TIMEOUT.as_secs()
            );
            return;
        }
    }
    let built = match Builder::authenticated_socket(stream, shared.guid.clone()) {
        Ok(b) => {
            b.p2p()
                .internal_executor(false)
                .build_message_stream()
                .await
        }
        Err(e) => Err(e),
    };
    let mut messages = match built {
        Ok(s) => s,
        Err(e) => {
            log::error!("{who}: cannot set up the connection: {e}");
            return;
        }
    };
    let conn = Connection::from(&messages);
    let _driver = crate::rt::drive(&conn);
    let mode = Mode::Peer {
        rules: Arc::new(Mutex::new(Vec::new())),
        uid,
        pid,
    };
    let forwarder = crate::rt::spawn(forward_signals(
        conn.clone(),
        mode.clone(),
        shared.signals.new_receiver(),
    ));
    let mut caller = Caller {
        uid: Some(uid),
        unique: None,
    };
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            // A hang-up (zbus reads end of file as a broken pipe).
            Err(zbus::Error::InputOutput(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                break
            }
            Err(e) => {
                log::warn!("{who}: bad message, disconnected: {e}");
                break;
            }
        };
        if msg.message_type() != Type::MethodCall {
            continue;
        }
        handle(&shared, &conn, &mode, &mut caller, &msg).await;
    }
    drop(forwarder);
    if let Some(u) = caller.unique {
        let mut peers = lock(&shared.peers);
        peers.clients.remove(&u);
        peers.names.retain(|_, owner| *owner != u);
    }
}

/// Connects to a bus daemon at `address` (`None`: the system bus), takes
/// `org.freedesktop.systemd1` and serves it until the bus goes away.
pub async fn serve_bus(shared: Arc<Shared>, address: Option<&str>) -> Result<(), zbus::Error> {
    let builder = match address {
        Some(a) => Builder::address(a)?,
        None => Builder::system()?,
    };
    let mut messages = builder
        .name(SYSTEMD_NAME)?
        .replace_existing_names(false)
        .internal_executor(false)
        .build_message_stream()
        .await?;
    let conn = Connection::from(&messages);
    let _driver = crate::rt::drive(&conn);
    log::info!(
        "serving {SYSTEMD_NAME} on the bus as {}",
        conn.unique_name().map(|n| n.as_str()).unwrap_or("?")
    );
    crate::cli::notify_ready();
    let mode = Mode::Bus {
        uids: Arc::new(Mutex::new(HashMap::new())),
    };
    crate::rt::spawn(forward_signals(
        conn.clone(),
        mode.clone(),
        shared.signals.new_receiver(),
    ))
    .detach();
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        if msg.message_type() != Type::MethodCall {
            continue;
        }
        // One task per call: a slow call (a freeze) must not hold up others.
        let (shared, conn, mode) = (shared.clone(), conn.clone(), mode.clone());
        crate::rt::spawn(async move {
            let mut caller = Caller {
                uid: bus_uid(&conn, &mode, &msg).await,
                unique: None,
            };
            handle(&shared, &conn, &mode, &mut caller, &msg).await;
        })
        .detach();
    }
    Err(zbus::Error::InputOutput(Arc::new(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the bus closed the connection",
    ))))
}

async fn bus_uid(conn: &Connection, mode: &Mode, msg: &Message) -> Option<u32> {
    let Mode::Bus { uids } = mode else {
        return None;
    };
    let sender = msg.header().sender()?.to_string();
    if let Some(uid) = lock(uids).get(&sender) {
        return Some(*uid);
    }
    let proxy = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    let name = BusName::try_from(sender.as_str()).ok()?;
    match proxy.get_connection_unix_user(name).await {
        Ok(uid) => {
            let mut uids = lock(uids);
            // Unique names are never reused, and kata-agent connects anew
            // for every call: keep the cache small.
            if uids.len() >= 256 {
                uids.clear();
            }
            uids.insert(sender, uid);
            Some(uid)
        }
        Err(e) => {
            log::warn!("cannot get the user of {sender}: {e}");
            None
        }
    }
}

async fn forward_signals(conn: Connection, mode: Mode, mut rx: async_broadcast::Receiver<Signal>) {
    loop {
        let s = match rx.recv().await {
            Ok(s) => s,
            Err(async_broadcast::RecvError::Overflowed(n)) => {
                log::warn!("{n} signals dropped for a slow client");
                continue;
            }
            Err(async_broadcast::RecvError::Closed) => return,
        };
        let msg = match signal_message(&mode, &s) {
            Ok(m) => m,
            Err(e) => {
                log::error!("cannot build signal {s:?}: {e}");
                continue;
            }
        };
        if let Mode::Peer { rules, .. } = &mode {
            // zbus cannot match a well-known sender; every signal here is
            // systemd1's, so only that name (or none) matches.
            let wanted = lock(rules).iter().any(|r| {
                let sender_ok = match r.sender() {
                    Some(BusName::WellKnown(n)) => n.as_str() == SYSTEMD_NAME,
                    _ => true,
                };
                sender_ok && r.matches(&msg).unwrap_or(false)
            });
            if !wanted {
                continue;
            }
        }
        if conn.send(&msg).await.is_err() {
            return;
        }
    }
}

fn signal_message(mode: &Mode, s: &Signal) -> zbus::Result<Message> {
    let member = match s {
        Signal::JobRemoved(..) => "JobRemoved",
        Signal::UnitRemoved(_) => "UnitRemoved",
    };
    let mut b = Message::signal(SYSTEMD_PATH, MANAGER_IFACE, member)?;
    if matches!(mode, Mode::Peer { .. }) {
        b = b.sender(SYSTEMD_UNIQUE)?;
    }
    match s {
        Signal::JobRemoved(job, result) => b.build(&(
            job.id,
            ObjectPath::try_from(job.path.as_str())?,
            job.unit.as_str(),
            *result,
        )),
        Signal::UnitRemoved(name) => {
            let path = unit::object_path(name);
            b.build(&(name.as_str(), ObjectPath::try_from(path.as_str())?))
        }
    }
}

/// The result of one call: the reply, or an error name and its message.
type Answer = Result<Message, (&'static str, String)>;

fn invalid(text: impl Into<String>) -> (&'static str, String) {
    ("org.freedesktop.DBus.Error.InvalidArgs", text.into())
}

fn dbus_err(e: Error) -> (&'static str, String) {
    (e.dbus_name(), e.to_string())
}

/// Signals to send once the reply is out.
type After = Vec<Signal>;

/// `BUSD_TRACE=1` in the environment: every call and its answer logged.
pub fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("BUSD_TRACE").is_some_and(|v| v == "1"))
}

async fn handle(
    shared: &Arc<Shared>,
    conn: &Connection,
    mode: &Mode,
    caller: &mut Caller,
    msg: &Message,
) {
    let hdr = msg.header();
    let member = hdr.member().map(|m| m.as_str()).unwrap_or("");
    let iface = hdr.interface().map(|i| i.as_str());
    let path = hdr.path().map(|p| p.as_str()).unwrap_or("");
    let dest = hdr.destination().map(|d| d.as_str());
    if trace() {
        log::info!(
            "call uid {:?}: {} {path} {iface:?} {member} (to {dest:?})",
            caller.uid,
            hdr.primary().serial_num()
        );
    }
    let p2p = matches!(mode, Mode::Peer { .. });
    let mut after = After::new();
    let mut stop_job: Option<(Job, String)> = None;
    let to_bus = p2p && (dest == Some(DBUS_NAME) || (dest.is_none() && path == DBUS_PATH));
    let from = if to_bus { DBUS_NAME } else { SYSTEMD_UNIQUE };
    let answer: Answer = if to_bus {
        bus_call(shared, mode, caller, &hdr, msg, path, iface, member).await
    } else if p2p && !matches!(dest, None | Some(SYSTEMD_NAME) | Some(SYSTEMD_UNIQUE)) {
        let name = dest.unwrap_or("");
        Err((
            "org.freedesktop.DBus.Error.ServiceUnknown",
            format!("The name {name} was not provided by any .service files"),
        ))
    } else {
        let from = p2p.then_some(SYSTEMD_UNIQUE);
        systemd_call(
            shared,
            from,
            caller,
            &hdr,
            msg,
            path,
            iface,
            member,
            &mut after,
            &mut stop_job,
        )
        .await
    };
    let reply = match answer {
        Ok(m) => Ok(m),
        Err((name, text)) => {
            if name != "org.freedesktop.systemd1.NoSuchUnit" {
                log::warn!(
                    "{member} from uid {}: {name}: {text}",
                    caller.uid.map_or(-1, i64::from)
                );
            }
            error_message(&hdr, p2p.then_some(from), name, &text)
        }
    };
    let no_reply = hdr.primary().flags().contains(Flags::NoReplyExpected);
    if trace() {
        let what = match &reply {
            Ok(m) => format!("{:?}", m.message_type()),
            Err(e) => format!("no reply: {e}"),
        };
        log::info!("answer to {member}: {what}");
    }
    match reply {
        Ok(reply) if !no_reply => {
            if let Err(e) = conn.send(&reply).await {
                log::warn!("cannot send the reply to {member}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::error!("cannot build the reply to {member}: {e}"),
    }
    // NameAcquired after Hello's reply, as a bus daemon sends it.
    if to_bus && member == "Hello" {
        if let Some(u) = &caller.unique {
            if let Ok(m) = Message::signal(DBUS_PATH, DBUS_NAME, "NameAcquired")
                .and_then(|b| b.sender(DBUS_NAME))
                .and_then(|b| b.destination(u.as_str()))
                .and_then(|b| b.build(&(u.as_str(),)))
            {
                let _ = conn.send(&m).await;
            }
        }
    }
    for s in after {
        shared.emit(s);
    }
    if let Some((job, rel)) = stop_job {
        crate::rt::spawn(finish_stop(shared.clone(), job, rel)).detach();
    }
}

fn error_message(
    hdr: &Header<'_>,
    sender: Option<&str>,
    name: &str,
    text: &str,
) -> zbus::Result<Message> {
    let mut b = Message::error(hdr, name)?;
    if let Some(s) = sender {
        b = b.sender(s)?;
    }
    b.build(&(text,))
}

fn reply<B>(hdr: &Header<'_>, sender: Option<&str>, body: &B) -> Answer
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let build = || -> zbus::Result<Message> {
        let mut b = Message::method_return(hdr)?;
        if let Some(s) = sender {
            b = b.sender(s)?;
        }
        b.build(body)
    };
    build().map_err(|e| {
        (
            "org.freedesktop.DBus.Error.Failed",
            format!("cannot build the reply: {e}"),
        )
    })
}

fn check_sig(msg: &Message, member: &str, want: &str) -> Result<(), (&'static str, String)> {
    let got = msg.body().signature().to_string_no_parens();
    if got == want {
        Ok(())
    } else {
        Err(invalid(format!(
            "{member} wants arguments of type '{want}', got '{got}'"
        )))
    }
}

fn body<T>(msg: &Message, member: &str) -> Result<T, (&'static str, String)>
where
    T: serde::de::DeserializeOwned + zbus::zvariant::Type,
{
    msg.body()
        .deserialize_unchecked::<T>()
        .map_err(|e| invalid(format!("{member}: cannot read the arguments: {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn bus_call(
    shared: &Arc<Shared>,
    mode: &Mode,
    caller: &mut Caller,
    hdr: &Header<'_>,
    msg: &Message,
    path: &str,
    iface: Option<&str>,
    member: &str,
) -> Answer {
    let from = Some(DBUS_NAME);
    let Mode::Peer { rules, uid, pid } = mode else {
        return Err(("org.freedesktop.DBus.Error.Failed", "not a bus".into()));
    };
    match (iface, member) {
        (Some(PEER_IFACE) | None, "Ping") => return reply(hdr, from, &()),
        (Some(PEER_IFACE) | None, "GetMachineId") => return machine_id(hdr, from),
        (Some(INTROSPECT_IFACE) | None, "Introspect") => {
            return reply(hdr, from, &(BUS_XML,));
        }
        (Some(PROPS_IFACE), "GetAll") => {
            return reply(hdr, from, &HashMap::<String, Value<'_>>::new());
        }
        (Some(PROPS_IFACE), _) => {
            return Err((
                "org.freedesktop.DBus.Error.UnknownProperty",
                "the bus object has no properties here".into(),
            ))
        }
        (Some(DBUS_NAME) | None, _) => {}
        (Some(other), _) => {
            return Err((
                "org.freedesktop.DBus.Error.UnknownInterface",
                format!("unknown interface {other}"),
            ))
        }
    }
    if path != DBUS_PATH && path != "/" {
        return Err((
            "org.freedesktop.DBus.Error.UnknownObject",
            format!("unknown object {path}"),
        ));
    }
    if caller.unique.is_none() && member != "Hello" {
        return Err((
            "org.freedesktop.DBus.Error.AccessDenied",
            "Client tried to send a message other than Hello without being registered".into(),
        ));
    }
    match member {
        "Hello" => {
            check_sig(msg, member, "")?;
            if caller.unique.is_some() {
                return Err((
                    "org.freedesktop.DBus.Error.Failed",
                    "Already handled an Hello message".into(),
                ));
            }
            let name = {
                let mut peers = lock(&shared.peers);
                let name = format!(":1.{}", peers.next);
                peers.next += 1;
                peers.clients.insert(name.clone(), (*uid, *pid));
                name
            };
            caller.unique = Some(name.clone());
            reply(hdr, from, &(name.as_str(),))
        }
        "AddMatch" | "RemoveMatch" => {
            check_sig(msg, member, "s")?;
            let (text,): (String,) = body(msg, member)?;
            if text.len() > MAX_RULE_LEN {
                return Err((
                    "org.freedesktop.DBus.Error.LimitsExceeded",
                    format!("a match rule longer than {MAX_RULE_LEN} bytes"),
                ));
            }
            let rule = MatchRule::try_from(text.as_str())
                .map(|r| r.to_owned())
                .map_err(|e| {
                    (
                        "org.freedesktop.DBus.Error.MatchRuleInvalid",
                        format!("invalid match rule {text:?}: {e}"),
                    )
                })?;
            let mut rules = lock(rules);
            if member == "AddMatch" {
                if rules.len() >= 512 {
                    return Err((
                        "org.freedesktop.DBus.Error.LimitsExceeded",
                        "too many match rules".into(),
                    ));
                }
                rules.push(rule);
            } else if let Some(i) = rules.iter().position(|r| *r == rule) {
                rules.remove(i);
            } else {
                return Err((
                    "org.freedesktop.DBus.Error.MatchRuleNotFound",
                    format!("no match rule {text:?}"),
                ));
            }
            reply(hdr, from, &())
        }
        "GetNameOwner"
        | "NameHasOwner"
        | "GetConnectionUnixUser"
        | "GetConnectionUnixProcessID"
        | "GetConnectionCredentials" => {
            check_sig(msg, member, "s")?;
            let (name,): (String,) = body(msg, member)?;
            let owner = name_owner(shared, &name);
            if member == "NameHasOwner" {
                return reply(hdr, from, &(owner.is_some(),));
            }
            let Some(owner) = owner else {
                return Err((
                    "org.freedesktop.DBus.Error.NameHasNoOwner",
                    format!("Could not get owner of name '{name}': no such name"),
                ));
            };
            let (cuid, cpid) = if owner == DBUS_NAME || owner == SYSTEMD_UNIQUE {
                (
                    rustix::process::getuid().as_raw(),
                    rustix::process::getpid()
                        .as_raw_nonzero()
                        .get()
                        .unsigned_abs(),
                )
            } else {
                lock(&shared.peers)
                    .clients
                    .get(&owner)
                    .copied()
                    .unwrap_or((u32::MAX, 0))
            };
            match member {
                "GetNameOwner" => reply(hdr, from, &(owner.as_str(),)),
                "GetConnectionUnixUser" => reply(hdr, from, &(cuid,)),
                "GetConnectionUnixProcessID" => reply(hdr, from, &(cpid,)),
                _ => {
                    let mut creds = HashMap::new();
                    creds.insert("UnixUserID", Value::from(cuid));
                    creds.insert("ProcessID", Value::from(cpid));
                    reply(hdr, from, &(creds,))
                }
            }
        }
        "RequestName" => {
            check_sig(msg, member, "su")?;
            let (name, _flags): (String, u32) = body(msg, member)?;
            if WellKnownName::try_from(name.as_str()).is_err() {
                return Err(invalid(format!("invalid bus name {name:?}")));
            }
            if name == DBUS_NAME {
                return Err(invalid("Connection is not allowed to own the service \"org.freedesktop.DBus\" because it is reserved for D-Bus' use only"));
            }
            if name == SYSTEMD_NAME {
                // Owned by busd itself: DBUS_REQUEST_NAME_REPLY_EXISTS.
                return reply(hdr, from, &(3u32,));
            }
            let me = caller.unique.clone().unwrap_or_default();
            let mut peers = lock(&shared.peers);
            if !peers.names.contains_key(&name)
                && peers.names.values().filter(|o| **o == me).count() >= MAX_NAMES
            {
                return Err((
                    "org.freedesktop.DBus.Error.LimitsExceeded",
                    format!("more than {MAX_NAMES} names owned"),
                ));
            }
            let code: u32 = match peers.names.get(&name) {
                Some(o) if *o == me => 4,
                Some(_) => 3,
                None => {
                    peers.names.insert(name, me);
                    1
                }
            };
            reply(hdr, from, &(code,))
        }
        "ReleaseName" => {
            check_sig(msg, member, "s")?;
            let (name,): (String,) = body(msg, member)?;
            let me = caller.unique.clone().unwrap_or_default();
            let mut peers = lock(&shared.peers);
            let code: u32 = match peers.names.get(&name) {
                Some(o) if *o == me => {
                    peers.names.remove(&name);
                    1
                }
                Some(_) => 3,
                None if name == SYSTEMD_NAME => 3,
                None => 2,
            };
            reply(hdr, from, &(code,))
        }
        "ListNames" => {
            let peers = lock(&shared.peers);
            let mut names = vec![
                DBUS_NAME.to_string(),
                SYSTEMD_NAME.to_string(),
                SYSTEMD_UNIQUE.to_string(),
            ];
            names.extend(peers.clients.keys().cloned());
            names.extend(peers.names.keys().cloned());
            reply(hdr, from, &(names,))
        }
        "ListActivatableNames" => reply(hdr, from, &(vec![DBUS_NAME],)),
        "GetId" => reply(hdr, from, &(shared.guid.as_str(),)),
        "StartServiceByName" => {
            check_sig(msg, member, "su")?;
            let (name, _): (String, u32) = body(msg, member)?;
            if name_owner(shared, &name).is_some() {
                // DBUS_START_REPLY_ALREADY_RUNNING
                reply(hdr, from, &(2u32,))
            } else {
                Err((
                    "org.freedesktop.DBus.Error.ServiceUnknown",
                    format!("The name {name} was not provided by any .service files"),
                ))
            }
        }
        _ => Err((
            "org.freedesktop.DBus.Error.UnknownMethod",
            format!("busd's bus does not implement {member}"),
        )),
    }
}

fn name_owner(shared: &Shared, name: &str) -> Option<String> {
    match name {
        DBUS_NAME => Some(DBUS_NAME.to_string()),
        SYSTEMD_NAME | SYSTEMD_UNIQUE => Some(SYSTEMD_UNIQUE.to_string()),
        _ => {
            let peers = lock(&shared.peers);
            if peers.clients.contains_key(name) {
                Some(name.to_string())
            } else {
                peers.names.get(name).cloned()
            }
        }
    }
}

fn machine_id(hdr: &Header<'_>, from: Option<&str>) -> Answer {
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if id.trim().len() == 32 => reply(hdr, from, &(id.trim(),)),
        _ => Err((
            "org.freedesktop.DBus.Error.FileNotFound",
            "no machine id in /etc/machine-id".into(),
        )),
    }
}

/// systemd1's methods that only root may call.
fn require_root(caller: &Caller, member: &str) -> Result<(), (&'static str, String)> {
    if caller.uid == Some(0) {
        Ok(())
    } else {
        Err((
            "org.freedesktop.DBus.Error.AccessDenied",
            format!(
                "{member}: only root may call org.freedesktop.systemd1 methods (caller uid {})",
                caller
                    .uid
                    .map_or_else(|| "unknown".to_string(), |u| u.to_string())
            ),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
async fn systemd_call(
    shared: &Arc<Shared>,
    from: Option<&str>,
    caller: &Caller,
    hdr: &Header<'_>,
    msg: &Message,
    path: &str,
    iface: Option<&str>,
    member: &str,
    after: &mut After,
    stop_job: &mut Option<(Job, String)>,
) -> Answer {
    match (iface, member) {
        (Some(PEER_IFACE) | None, "Ping") => return reply(hdr, from, &()),
        (Some(PEER_IFACE) | None, "GetMachineId") => return machine_id(hdr, from),
        (Some(INTROSPECT_IFACE) | None, "Introspect") => {
            let xml = if path == SYSTEMD_PATH {
                MANAGER_XML.to_string()
            } else if let Some(name) = unit::unit_of_path(path) {
                let kind = shared.manager().unit(&name).map(|u| u.kind).ok();
                match kind {
                    Some(k) => unit_xml(k.interface()),
                    None => return Err(unknown_object(path)),
                }
            } else {
                return Err(unknown_object(path));
            };
            return reply(hdr, from, &(xml,));
        }
        (Some(PROPS_IFACE), "Get" | "GetAll" | "Set") => {
            return properties(shared, hdr, msg, path, member, from);
        }
        _ => {}
    }
    if path != SYSTEMD_PATH {
        return Err(if unit::unit_of_path(path).is_some() {
            (
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!("unit objects here have properties only; no {member}"),
            )
        } else {
            unknown_object(path)
        });
    }
    if !matches!(iface, None | Some(MANAGER_IFACE)) {
        return Err((
            "org.freedesktop.DBus.Error.UnknownInterface",
            format!("unknown interface {}", iface.unwrap_or("")),
        ));
    }
    require_root(caller, member)?;
    let o = |p: &str| -> Result<ObjectPath<'static>, (&'static str, String)> {
        ObjectPath::try_from(p.to_string())
            .map_err(|e| ("org.freedesktop.DBus.Error.Failed", format!("{p}: {e}")))
    };
    match member {
        "GetUnit" | "LoadUnit" => {
            check_sig(msg, member, "s")?;
            let (name,): (String,) = body(msg, member)?;
            shared.manager().unit(&name).map_err(dbus_err)?;
            reply(hdr, from, &(o(&unit::object_path(&name))?,))
        }
        "StartTransientUnit" => {
            check_sig(msg, member, "ssa(sv)a(sa(sv))")?;
            #[allow(clippy::type_complexity)]
            let (name, mode, props, aux): (
                String,
                String,
                Vec<(String, OwnedValue)>,
                Vec<(String, Vec<(String, OwnedValue)>)>,
            ) = body(msg, member)?;
            let props = values(props);
            let job = shared
                .manager()
                .start_transient(&name, &mode, &props, aux.len())
                .map_err(dbus_err)?;
            let r = reply(hdr, from, &(o(&job.path)?,));
            after.push(Signal::JobRemoved(job, "done"));
            r
        }
        "AttachProcessesToUnit" => {
            check_sig(msg, member, "ssau")?;
            let (name, sub, pids): (String, String, Vec<u32>) = body(msg, member)?;
            shared
                .manager()
                .attach(&name, &sub, &pids)
                .map_err(dbus_err)?;
            reply(hdr, from, &())
        }
        "SetUnitProperties" => {
            check_sig(msg, member, "sba(sv)")?;
            let (name, _runtime, props): (String, bool, Vec<(String, OwnedValue)>) =
                body(msg, member)?;
            let props = values(props);
            shared
                .manager()
                .set_properties(&name, &props)
                .map_err(dbus_err)?;
            reply(hdr, from, &())
        }
        "KillUnit" => {
            check_sig(msg, member, "ssi")?;
            let (name, whom, signal): (String, String, i32) = body(msg, member)?;
            let next = shared
                .manager()
                .kill(&name, &whom, signal)
                .map_err(dbus_err)?;
            if let AfterKill::Reap(rel) = next {
                if settle(shared, &rel, KILL_SETTLE).await {
                    forget_cgroup(shared, &rel, after);
                } else {
                    log::warn!(
                        "{name}: still has processes {} s after SIGKILL",
                        KILL_SETTLE.as_secs()
                    );
                }
            }
            reply(hdr, from, &())
        }
        "FreezeUnit" | "ThawUnit" => {
            check_sig(msg, member, "s")?;
            let (name,): (String,) = body(msg, member)?;
            let on = member == "FreezeUnit";
            let rel = shared.manager().freeze(&name, on).map_err(dbus_err)?;
            let deadline = Instant::now() + FREEZE_TIMEOUT;
            while !shared.manager().frozen(&rel, on) {
                if Instant::now() >= deadline {
                    return Err((
                        "org.freedesktop.DBus.Error.Failed",
                        format!(
                            "{name}: cgroup /{rel} not {} within {} s",
                            if on { "frozen" } else { "thawed" },
                            FREEZE_TIMEOUT.as_secs()
                        ),
                    ));
                }
                crate::rt::sleep(Duration::from_millis(2)).await;
            }
            reply(hdr, from, &())
        }
        "StopUnit" => {
            check_sig(msg, member, "ss")?;
            let (name, mode): (String, String) = body(msg, member)?;
            let (job, rel) = shared.manager().stop(&name, &mode).map_err(dbus_err)?;
            let r = reply(hdr, from, &(o(&job.path)?,));
            match rel {
                Some(rel) => *stop_job = Some((job, rel)),
                None => {
                    after.push(Signal::UnitRemoved(name));
                    after.push(Signal::JobRemoved(job, "done"));
                }
            }
            r
        }
        "Subscribe" | "Unsubscribe" | "Reload" => reply(hdr, from, &()),
        "ListUnits" => {
            let units: Vec<_> = {
                let mut m = shared.manager();
                let names = m.unit_names();
                names
                    .iter()
                    .filter_map(|n| m.unit(n).ok().cloned())
                    .collect()
            };
            let rows: Result<Vec<_>, _> = units
                .iter()
                .map(|u| {
                    let sub = if u.kind == unit::Kind::Scope {
                        "running"
                    } else {
                        "active"
                    };
                    Ok::<_, (&'static str, String)>((
                        u.name.clone(),
                        u.description.clone(),
                        "loaded",
                        "active",
                        sub,
                        "",
                        o(&unit::object_path(&u.name))?,
                        0u32,
                        "",
                        o("/")?,
                    ))
                })
                .collect();
            reply(hdr, from, &(rows?,))
        }
        _ => Err((
            "org.freedesktop.DBus.Error.UnknownMethod",
            format!("busd does not implement {MANAGER_IFACE}.{member}"),
        )),
    }
}

fn values(props: Vec<(String, OwnedValue)>) -> Vec<(String, Value<'static>)> {
    props
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect()
}

fn unknown_object(path: &str) -> (&'static str, String) {
    (
        "org.freedesktop.DBus.Error.UnknownObject",
        format!("unknown object {path}"),
    )
}

/// Waits until the cgroup `rel` is empty; false on timeout.
async fn settle(shared: &Shared, rel: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !shared.manager().populated(rel) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        crate::rt::sleep(Duration::from_millis(2)).await;
    }
}

fn forget_cgroup(shared: &Shared, rel: &str, after: &mut After) {
    let mut m = shared.manager();
    if let Some(name) = m.unit_by_cgroup(rel) {
        m.forget(&name);
        after.push(Signal::UnitRemoved(name));
    }
}

async fn finish_stop(shared: Arc<Shared>, job: Job, rel: String) {
    if !settle(&shared, &rel, STOP_TIMEOUT).await {
        log::warn!(
            "{}: still running {} s after SIGTERM, sending SIGKILL",
            job.unit,
            STOP_TIMEOUT.as_secs()
        );
        shared
            .manager()
            .kill_cgroup(&rel, rustix::process::Signal::KILL);
        settle(&shared, &rel, KILL_SETTLE).await;
    }
    let mut after = After::new();
    forget_cgroup(&shared, &rel, &mut after);
    for s in after {
        shared.emit(s);
    }
    shared.emit(Signal::JobRemoved(job, "done"));
}

fn manager_properties() -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("Version", Value::from(manager::VERSION)),
        ("Features", Value::from("")),
        (
            "Architecture",
            Value::from(std::env::consts::ARCH.replace('_', "-")),
        ),
        ("Virtualization", Value::from("")),
        ("SystemState", Value::from("running")),
        ("DefaultStandardOutput", Value::from("journal")),
    ]
}

fn properties(
    shared: &Shared,
    hdr: &Header<'_>,
    msg: &Message,
    path: &str,
    member: &str,
    from: Option<&str>,
) -> Answer {
    let all: Vec<(&'static str, &'static str, Value<'static>)> = if path == SYSTEMD_PATH {
        manager_properties()
            .into_iter()
            .map(|(n, v)| (MANAGER_IFACE, n, v))
            .collect()
    } else if let Some(name) = unit::unit_of_path(path) {
        match shared.manager().unit(&name) {
            Ok(u) => u.properties(),
            Err(Error::InvalidArgs(_)) => return Err(unknown_object(path)),
            Err(e) => return Err(dbus_err(e)),
        }
    } else {
        return Err(unknown_object(path));
    };
    let known_iface = |i: &str| all.iter().any(|(x, _, _)| *x == i);
    match member {
        "GetAll" => {
            check_sig(msg, member, "s")?;
            let (iface,): (String,) = body(msg, member)?;
            if !iface.is_empty() && !known_iface(&iface) {
                return Err((
                    "org.freedesktop.DBus.Error.UnknownInterface",
                    format!("{path} has no interface {iface}"),
                ));
            }
            let map: HashMap<&str, &Value<'_>> = all
                .iter()
                .filter(|(i, _, _)| iface.is_empty() || *i == iface)
                .map(|(_, n, v)| (*n, v))
                .collect();
            reply(hdr, from, &(map,))
        }
        "Get" => {
            check_sig(msg, member, "ss")?;
            let (iface, prop): (String, String) = body(msg, member)?;
            match all
                .iter()
                .find(|(i, n, _)| (iface.is_empty() || *i == iface) && *n == prop)
            {
                Some((_, _, v)) => reply(hdr, from, v),
                None => Err((
                    "org.freedesktop.DBus.Error.UnknownProperty",
                    format!("{path} has no property {iface}.{prop}"),
                )),
            }
        }
        _ => Err((
            "org.freedesktop.DBus.Error.PropertyReadOnly",
            format!("properties of {path} are read-only"),
        )),
    }
}

const BUS_XML: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="org.freedesktop.DBus">
  <method name="Hello"><arg direction="out" type="s"/></method>
  <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
  <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
  <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
  <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
  <method name="ListNames"><arg direction="out" type="as"/></method>
  <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
  <method name="AddMatch"><arg direction="in" type="s"/></method>
  <method name="RemoveMatch"><arg direction="in" type="s"/></method>
  <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
  <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
  <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
  <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
  <method name="GetId"><arg direction="out" type="s"/></method>
  <signal name="NameAcquired"><arg type="s"/></signal>
 </interface>
 <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>
 <interface name="org.freedesktop.DBus.Introspectable"><method name="Introspect"><arg direction="out" type="s"/></method></interface>
</node>
"#;

const MANAGER_XML: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="org.freedesktop.systemd1.Manager">
  <property name="Version" type="s" access="read"/>
  <property name="Features" type="s" access="read"/>
  <property name="Architecture" type="s" access="read"/>
  <property name="Virtualization" type="s" access="read"/>
  <property name="SystemState" type="s" access="read"/>
  <method name="GetUnit"><arg name="name" direction="in" type="s"/><arg name="unit" direction="out" type="o"/></method>
  <method name="LoadUnit"><arg name="name" direction="in" type="s"/><arg name="unit" direction="out" type="o"/></method>
  <method name="ListUnits"><arg name="units" direction="out" type="a(ssssssouso)"/></method>
  <method name="StartTransientUnit"><arg name="name" direction="in" type="s"/><arg name="mode" direction="in" type="s"/><arg name="properties" direction="in" type="a(sv)"/><arg name="aux" direction="in" type="a(sa(sv))"/><arg name="job" direction="out" type="o"/></method>
  <method name="StopUnit"><arg name="name" direction="in" type="s"/><arg name="mode" direction="in" type="s"/><arg name="job" direction="out" type="o"/></method>
  <method name="KillUnit"><arg name="name" direction="in" type="s"/><arg name="whom" direction="in" type="s"/><arg name="signal" direction="in" type="i"/></method>
  <method name="FreezeUnit"><arg name="name" direction="in" type="s"/></method>
  <method name="ThawUnit"><arg name="name" direction="in" type="s"/></method>
  <method name="SetUnitProperties"><arg name="name" direction="in" type="s"/><arg name="runtime" direction="in" type="b"/><arg name="properties" direction="in" type="a(sv)"/></method>
  <method name="AttachProcessesToUnit"><arg name="unit_name" direction="in" type="s"/><arg name="subcgroup" direction="in" type="s"/><arg name="pids" direction="in" type="au"/></method>
  <method name="Subscribe"/>
  <method name="Unsubscribe"/>
  <method name="Reload"/>
  <signal name="JobRemoved"><arg name="id" type="u"/><arg name="job" type="o"/><arg name="unit" type="s"/><arg name="result" type="s"/></signal>
  <signal name="UnitRemoved"><arg name="id" type="s"/><arg name="unit" type="o"/></signal>
 </interface>
 <interface name="org.freedesktop.DBus.Properties">
  <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
  <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>
 <interface name="org.freedesktop.DBus.Introspectable"><method name="Introspect"><arg direction="out" type="s"/></method></interface>
</node>
"#;

fn unit_xml(type_iface: &str) -> String {
    format!(
        r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="org.freedesktop.systemd1.Unit">
  <property name="Id" type="s" access="read"/>
  <property name="Names" type="as" access="read"/>
  <property name="Description" type="s" access="read"/>
  <property name="LoadState" type="s" access="read"/>
  <property name="ActiveState" type="s" access="read"/>
  <property name="SubState" type="s" access="read"/>
  <property name="FreezerState" type="s" access="read"/>
  <property name="Transient" type="b" access="read"/>
 </interface>
 <interface name="{type_iface}">
  <property name="ControlGroup" type="s" access="read"/>
  <property name="Slice" type="s" access="read"/>
 </interface>
 <interface name="org.freedesktop.DBus.Properties">
  <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
  <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{{sv}}"/></method>
 </interface>
</node>
"#
    )
}
