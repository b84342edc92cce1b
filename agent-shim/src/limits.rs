//! What one peer on the agent's port may cost the server.
//!
//! Bytes on the vsock are untrusted (docs/threat-model.md). The ttRPC
//! server reads a frame's 10-byte header, then allocates the whole payload
//! the header announces (up to ttRPC's 4 MiB) and waits for it; it accepts
//! every connection and never times one out. So a peer could pin 4 MiB per
//! connection by announcing a frame and sending it slowly or not at all,
//! and hold any number of connections open without a word. Every accepted
//! connection therefore goes through [`Conn`], which follows the frames as
//! they pass and enforces [`Limits`]:
//!
//! - **connections**: at most `max_connections` at once. The next makes
//!   room by shutting one down: the oldest of those that have not sent a
//!   whole frame yet (a real client sends its first at once), else the one
//!   that has waited longest between frames (a ttRPC client reconnects).
//!   When every connection is inside a frame after whole ones, the new one
//!   is closed at once.
//! - **deadlines**: a connection must send its first frame, and every frame
//!   must arrive whole, within `frame_timeout` of the accept or of its first
//!   byte; past it the connection is closed. A connection between frames
//!   has no deadline: the Kata runtime keeps its connection open for the
//!   sandbox's life and may be silent for as long as nothing happens.
//! - **pinned memory**: the payloads announced by frames in progress above
//!   `small_frame` bytes may total at most `pinned_max`; a header that
//!   would pass it closes its connection before the server allocates
//!   anything. Frames up to `small_frame` (every health check, most agent
//!   calls) are not counted: `max_connections` of them pin at most
//!   `max_connections × small_frame`. Frames over ttRPC's 4 MiB are not
//!   counted either: the server discards them a page at a time.
//!
//! The first connection refused, evicted, timed out or cut off for memory
//! is a warning; the rest are debug lines (no log flood).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes of a ttRPC frame header: length (u32, big-endian), stream id
/// (u32), type, flags.
const HEADER: usize = 10;

/// ttRPC's largest frame; the server discards larger ones unread.
pub const FRAME_MAX: usize = 4 << 20;

/// The limits; [`Limits::default`] holds the values the binary uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub frame_timeout: Duration,
    pub small_frame: usize,
    pub pinned_max: usize,
}

/// Connections open at once (the Kata runtime uses one or two).
pub const MAX_CONNECTIONS: usize = 128;
/// From accept to the first frame, and from a frame's first byte to its last.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Payloads up to this size are not counted against `pinned_max`.
pub const SMALL_FRAME: usize = 64 << 10;
/// The most payload bytes the larger frames in progress may pin together.
pub const PINNED_MAX: usize = 64 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            frame_timeout: FRAME_TIMEOUT,
            small_frame: SMALL_FRAME,
            pinned_max: PINNED_MAX,
        }
    }
}

/// What the server's connections hold, shared by them and the listener.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    inner: Mutex<Inner>,
    warned: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Payload bytes reserved by frames in progress.
    pinned: usize,
}

#[derive(Debug)]
struct Entry {
    fd: Arc<OwnedFd>,
    accepted: Instant,
    /// It has sent at least one whole frame.
    framed: bool,
    /// When it last completed a frame, while it waits between frames.
    idle_since: Option<Instant>,
    /// Shut down to make room; no longer counted.
    evicted: bool,
}

impl Inner {
    /// The connection to close to make room: the oldest of those that have
    /// not sent a whole frame yet (a client sends its first at once), else
    /// the one idle longest between frames; none when every connection is
    /// inside a frame after whole ones (those end by their deadline).
    fn evictable(&mut self) -> Option<&mut Entry> {
        let live = self.conns.values_mut().filter(|e| !e.evicted);
        let (fresh, framed): (Vec<_>, Vec<_>) = live.partition(|e| !e.framed);
        if !fresh.is_empty() {
            return fresh.into_iter().min_by_key(|e| e.accepted);
        }
        framed
            .into_iter()
            .filter(|e| e.idle_since.is_some())
            .min_by_key(|e| e.idle_since)
    }
}

impl Registry {
    pub fn new(limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            limits,
            inner: Mutex::new(Inner::default()),
            warned: AtomicBool::new(false),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters: go on.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connections counted against the limit now.
    pub fn connections(&self) -> usize {
        self.lock().conns.values().filter(|e| !e.evicted).count()
    }

    /// Payload bytes pinned by frames in progress now.
    pub fn pinned(&self) -> usize {
        self.lock().pinned
    }

    /// Logs why a connection was closed: a warning the first time.
    fn note(&self, what: std::fmt::Arguments<'_>) {
        if self.warned.swap(true, Ordering::Relaxed) {
            log::debug!("agent server: {what}");
        } else {
            log::warn!("agent server: {what} (further ones are logged at debug level)");
        }
    }

    /// Takes a new connection in, making room by evicting the connection
    /// idle longest between frames; `None` (the socket closed) when there
    /// is no room.
    fn admit(self: &Arc<Self>, fd: OwnedFd) -> io::Result<Option<Conn>> {
        let fd = Arc::new(fd);
        let id = {
            let mut inner = self.lock();
            let live = inner.conns.values().filter(|e| !e.evicted).count();
            if live >= self.limits.max_connections {
                match inner.evictable() {
                    Some(entry) => {
                        entry.evicted = true;
                        // Its reader sees the end of the stream and the
                        // server drops it.
                        let _ = rustix::net::shutdown(&*entry.fd, rustix::net::Shutdown::Both);
                        drop(inner);
                        self.note(format_args!(
                            "{} connections open: closed one to make room",
                            self.limits.max_connections
                        ));
                        inner = self.lock();
                    }
                    None => {
                        drop(inner);
                        self.note(format_args!(
                            "{} connections open, each inside a frame: refused a new one",
                            self.limits.max_connections
                        ));
                        return Ok(None);
                    }
                }
            }
            let id = inner.next_id;
            inner.next_id += 1;
            inner.conns.insert(
                id,
                Entry {
                    fd: Arc::clone(&fd),
                    accepted: Instant::now(),
                    framed: false,
                    idle_since: None,
                    evicted: false,
                },
            );
            id
        };
        let io = match register(fd) {
            Ok(io) => io,
            Err(err) => {
                self.lock().conns.remove(&id);
                return Err(err);
            }
        };
        Ok(Some(Conn {
            io,
            id,
            registry: Arc::clone(self),
            frame: Frame::Header {
                bytes: [0; HEADER],
                got: 0,
                given: 0,
            },
            reserved: 0,
            deadline: Some(Box::pin(tokio::time::sleep(self.limits.frame_timeout))),
        }))
    }

    /// Reserves a frame's payload; false when it would pass `pinned_max`.
    fn reserve(&self, len: usize) -> bool {
        let mut inner = self.lock();
        match inner.pinned.checked_add(len) {
            Some(total) if total <= self.limits.pinned_max => {
                inner.pinned = total;
                true
            }
            _ => false,
        }
    }

    fn release(&self, len: usize) {
        let mut inner = self.lock();
        inner.pinned = inner.pinned.saturating_sub(len);
    }

    /// Between frames (`idle`, after a whole one) or inside one.
    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(entry) = self.lock().conns.get_mut(&id) {
            entry.idle_since = idle.then(Instant::now);
            entry.framed |= idle;
        }
    }
}

/// Where a connection is in its stream of frames.
#[derive(Debug)]
enum Frame {
    /// Reading a header: `got` bytes of it in, `given` of them passed on.
    Header {
        bytes: [u8; HEADER],
        got: usize,
        given: usize,
    },
    /// Passing a payload on: `left` bytes to go.
    Payload { left: usize },
}

/// One accepted connection, as the ttRPC server reads and writes it.
#[derive(Debug)]
pub struct Conn {
    io: AsyncFd<Arc<OwnedFd>>,
    id: u64,
    registry: Arc<Registry>,
    frame: Frame,
    /// Payload bytes this connection's frame holds in the registry.
    reserved: usize,
    /// Until the first frame, or the end of the frame in progress.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Before `io` closes the socket: an eviction never shuts down a
        // descriptor number that was reused.
        self.registry.release(self.reserved);
        self.registry.lock().conns.remove(&self.id);
    }
}

/// A descriptor owned by what holds it, closed only when that is dropped.
trait Owned: std::os::fd::AsRawFd {}
impl Owned for OwnedFd {}
impl Owned for Arc<OwnedFd> {}

/// Registers `fd` with the runtime's reactor (one of the crate's two
/// `unsafe`, with RDTSC in the benchmark).
#[allow(unsafe_code)]
fn register<T: Owned>(fd: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `T` owns its open descriptor (`Owned`): it stays open, the
    // same file description, until the AsyncFd (which owns `fd`) is
    // dropped, and as_raw_fd always returns that one number.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

fn cut(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, what.to_owned())
}

impl Conn {
    /// One non-blocking read(2) into `buf`, waiting for readiness.
    fn poll_read_fd(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = match self.io.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            match rustix::io::read(self.io.get_ref().as_ref(), &mut *buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Poll::Ready(Err(err.into())),
            }
        }
    }

    /// A frame's header is complete: reserve what its payload will pin.
    fn header_done(&mut self, bytes: &[u8; HEADER]) -> io::Result<usize> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let limits = self.registry.limits;
        if len > limits.small_frame && len <= FRAME_MAX {
            if !self.registry.reserve(len) {
                self.registry.note(format_args!(
                    "a frame of {len} bytes would pin more than {} bytes of partial frames: connection closed",
                    limits.pinned_max
                ));
                return Err(cut("too much memory pinned by partial frames"));
            }
            self.reserved = len;
        }
        Ok(len)
    }

    /// A frame has passed whole.
    fn frame_done(&mut self) {
        self.registry.release(std::mem::take(&mut self.reserved));
        self.deadline = None;
        self.registry.set_idle(self.id, true);
        self.frame = Frame::Header {
            bytes: [0; HEADER],
            got: 0,
            given: 0,
        };
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.registry.note(format_args!(
                    "no whole frame within {:?}: connection closed",
                    this.registry.limits.frame_timeout
                ));
                return Poll::Ready(Err(cut("frame timeout")));
            }
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.frame {
                Frame::Header { bytes, got, given } => {
                    if *got < HEADER {
                        let mut part = [0u8; HEADER];
                        let want = HEADER - *got;
                        let n = match this.poll_read_fd(cx, &mut part[..want]) {
                            Poll::Ready(Ok(n)) => n,
                            other => return other.map_ok(|_| ()),
                        };
                        if n == 0 {
                            // The end of the stream (mid-header or not).
                            return Poll::Ready(Ok(()));
                        }
                        let Frame::Header { bytes, got, .. } = &mut this.frame else {
                            unreachable!("state changed while reading")
                        };
                        if *got == 0 {
                            // A frame starts: its whole must come in time.
                            if this.deadline.is_none() {
                                this.deadline = Some(Box::pin(tokio::time::sleep(
                                    this.registry.limits.frame_timeout,
                                )));
                            }
                            this.registry.set_idle(this.id, false);
                        }
                        bytes[*got..*got + n].copy_from_slice(&part[..n]);
                        *got += n;
                        if *got == HEADER {
                            let header = *bytes;
                            this.header_done(&header)?;
                        }
                        continue;
                    }
                    let take = (HEADER - *given).min(buf.remaining());
                    buf.put_slice(&bytes[*given..*given + take]);
                    *given += take;
                    if *given == HEADER {
                        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        this.frame = Frame::Payload { left: len as usize };
                        if len == 0 {
                            this.frame_done();
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                Frame::Payload { left } => {
                    let want = (*left).min(buf.remaining());
                    let dst = buf.initialize_unfilled_to(want);
                    let n = match this.poll_read_fd(cx, dst) {
                        Poll::Ready(Ok(n)) => n,
                        other => return other.map_ok(|_| ()),
                    };
                    buf.advance(n);
                    if n > 0 {
                        let Frame::Payload { left } = &mut this.frame else {
                            unreachable!("state changed while reading")
                        };
                        *left -= n;
                        if *left == 0 {
                            this.frame_done();
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = match self.io.poll_write_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            };
            match rustix::io::write(self.io.get_ref().as_ref(), buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(err) => return Poll::Ready(Err(err.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = rustix::net::shutdown(self.io.get_ref().as_ref(), rustix::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// The listening socket as the ttRPC server's stream of connections,
/// each admitted by the registry.
#[derive(Debug)]
pub struct Accept {
    listener: AsyncFd<OwnedFd>,
    registry: Arc<Registry>,
    /// After running out of descriptors or memory: accept again then.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long accepting pauses after EMFILE, ENFILE, ENOMEM or ENOBUFS.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Accept {
    /// `listener` must be a non-blocking listening stream socket.
    pub fn new(listener: OwnedFd, registry: Arc<Registry>) -> io::Result<Accept> {
        Ok(Accept {
            listener: register(listener)?,
            registry,
            backoff: None,
        })
    }
}

impl futures_core::Stream for Accept {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(backoff) = this.backoff.as_mut() {
            if backoff.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.backoff = None;
        }
        loop {
            let mut ready = match this.listener.poll_read_ready(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Pending => return Poll::Pending,
            };
            use rustix::io::Errno;
            use rustix::net::SocketFlags;
            match rustix::net::accept_with(
                this.listener.get_ref(),
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => match this.registry.admit(fd) {
                    Ok(Some(conn)) => return Poll::Ready(Some(Ok(conn))),
                    Ok(None) => {}
                    Err(err) => return Poll::Ready(Some(Err(err))),
                },
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(err @ (Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::NOBUFS)) => {
                    log::warn!("agent server: accept: {err}; trying again in {ACCEPT_BACKOFF:?}");
                    let mut backoff = Box::pin(tokio::time::sleep(ACCEPT_BACKOFF));
                    if backoff.as_mut().poll(cx).is_pending() {
                        this.backoff = Some(backoff);
                        return Poll::Pending;
                    }
                }
                Err(err) => return Poll::Ready(Some(Err(err.into()))),
            }
        }
    }
}
