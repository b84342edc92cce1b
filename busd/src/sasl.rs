//! The server's side of D-Bus authentication (SASL with the EXTERNAL
//! mechanism), done by busd before zbus sees a connection.
//!
//! Why not zbus's own: its handshake reader indexes the byte before the
//! first `\n` of what it has received, and panics when a client's data
//! starts with `\n` (zbus 5.19, `handshake/common.rs`); under
//! `panic = "abort"` one such byte from any local process would end busd.
//! It also grows its buffer without bound until a newline and keeps any
//! descriptors sent before `BEGIN`. Here every line is bounded
//! ([`MAX_LINE`]), the number of commands too ([`MAX_COMMANDS`]), nothing
//! is read past `BEGIN`'s line (the peer's first message follows it, for
//! zbus to read), and descriptors sent during the handshake are discarded
//! by the kernel (plain reads, no control buffer).

use std::io::Read;
use std::os::unix::net::UnixStream;

use async_io::Async;
use futures_lite::AsyncWriteExt;

/// The longest command line accepted (dbus-daemon's own limit is larger,
/// but no client's EXTERNAL exchange comes near it).
pub const MAX_LINE: usize = 1024;
/// Commands before `BEGIN`; a real client needs at most four.
pub const MAX_COMMANDS: usize = 16;

/// What to do after one command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this reply (CRLF included) and read the next command.
    Reply(String),
    /// Authenticated; the peer's messages follow.
    Begin,
    /// Hang up, for this reason.
    Close(String),
}

/// The handshake's state for one client whose uid the kernel told
/// (SO_PEERCRED).
#[derive(Debug)]
pub struct Server {
    uid: u32,
    guid: String,
    authenticated: bool,
    waiting_data: bool,
    commands: usize,
}

const REJECTED: &str = "REJECTED EXTERNAL\r\n";

impl Server {
    pub fn new(uid: u32, guid: &str) -> Self {
        Server {
            uid,
            guid: guid.to_string(),
            authenticated: false,
            waiting_data: false,
            commands: 0,
        }
    }

    /// One command line, without its CRLF (and without the NUL byte that
    /// starts the stream).
    pub fn line(&mut self, line: &[u8]) -> Step {
        self.commands += 1;
        if self.commands > MAX_COMMANDS {
            return Step::Close(format!("more than {MAX_COMMANDS} commands"));
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Step::Reply("ERROR \"not UTF-8\"\r\n".into());
        };
        let mut words = text.split(' ');
        let command = words.next().unwrap_or_default();
        let (first, second) = (words.next(), words.next());
        match command {
            "AUTH" if !self.authenticated => match (first, second, words.next()) {
                (Some("EXTERNAL"), None, None) => {
                    self.waiting_data = true;
                    Step::Reply("DATA\r\n".into())
                }
                (Some("EXTERNAL"), Some(response), None) => self.external(response),
                _ => Step::Reply(REJECTED.into()),
            },
            "DATA" if self.waiting_data && second.is_none() => {
                self.waiting_data = false;
                self.external(first.unwrap_or_default())
            }
            "CANCEL" | "ERROR" if !self.authenticated => {
                self.waiting_data = false;
                Step::Reply(REJECTED.into())
            }
            "NEGOTIATE_UNIX_FD" if self.authenticated && first.is_none() => {
                Step::Reply("AGREE_UNIX_FD\r\n".into())
            }
            "BEGIN" if self.authenticated && first.is_none() => Step::Begin,
            _ => Step::Reply("ERROR \"unexpected command\"\r\n".into()),
        }
    }

    /// EXTERNAL: the client's claimed identity (hex of its decimal uid, or
    /// empty for "whatever the kernel says") must be the peer's own.
    fn external(&mut self, response: &str) -> Step {
        let claimed = if response.is_empty() {
            Some(self.uid)
        } else {
            decode_hex(response)
                .and_then(|s| String::from_utf8(s).ok())
                .and_then(|s| s.parse::<u32>().ok())
        };
        if claimed == Some(self.uid) {
            self.authenticated = true;
            Step::Reply(format!("OK {}\r\n", self.guid))
        } else {
            Step::Reply(REJECTED.into())
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Runs the handshake on `stream` for a peer of `uid`. Reads only the
/// handshake's bytes: each command up to its `\n`, found by peeking.
pub async fn handshake(stream: &Async<UnixStream>, uid: u32, guid: &str) -> Result<(), String> {
    let mut server = Server::new(uid, guid);
    let mut line: Vec<u8> = Vec::with_capacity(128);
    let mut first_byte = true;
    loop {
        let mut buf = [0u8; MAX_LINE];
        let peeked = stream
            .read_with(|s| {
                rustix::net::recv(s, &mut buf[..], rustix::net::RecvFlags::PEEK)
                    .map(|(n, _)| n)
                    .map_err(std::io::Error::from)
            })
            .await
            .map_err(|e| format!("read: {e}"))?;
        if peeked == 0 {
            return Err("hung up during authentication".into());
        }
        // Up to and including the first newline, or all of it: bytes
        // before a newline belong to the line being read.
        let take = buf
            .get(..peeked)
            .and_then(|b| b.iter().position(|c| *c == b'\n'))
            .map_or(peeked, |i| i + 1);
        let read = stream
            .read_with(|s| (&*s).read(&mut buf[..take]))
            .await
            .map_err(|e| format!("read: {e}"))?;
        let mut got = buf.get(..read).unwrap_or_default();
        if first_byte && !got.is_empty() {
            if got.first() != Some(&0) {
                return Err("the first byte is not NUL".into());
            }
            got = got.get(1..).unwrap_or_default();
            first_byte = false;
        }
        line.extend_from_slice(got);
        if line.len() > MAX_LINE {
            return Err(format!("a command longer than {MAX_LINE} bytes"));
        }
        if line.last() != Some(&b'\n') {
            continue;
        }
        let Some(command) = line.strip_suffix(b"\r\n") else {
            return Err("a command not ended by CRLF".into());
        };
        let step = server.line(command);
        line.clear();
        match step {
            Step::Reply(reply) => {
                let mut w = stream;
                w.write_all(reply.as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
            }
            Step::Begin => return Ok(()),
            Step::Close(why) => return Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn external_with_the_peers_uid_then_fds_then_begin() {
        let mut s = Server::new(0, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            s.line(b"BEGIN"),
            Step::Reply("ERROR \"unexpected command\"\r\n".into())
        );
        assert_eq!(
            s.line(format!("AUTH EXTERNAL {}", hex("0")).as_bytes()),
            Step::Reply("OK 0123456789abcdef0123456789abcdef\r\n".into())
        );
        assert_eq!(
            s.line(b"NEGOTIATE_UNIX_FD"),
            Step::Reply("AGREE_UNIX_FD\r\n".into())
        );
        assert_eq!(s.line(b"BEGIN"), Step::Begin);
    }

    #[test]
    fn external_without_initial_response_takes_data() {
        let mut s = Server::new(1000, "g");
        assert_eq!(s.line(b"AUTH EXTERNAL"), Step::Reply("DATA\r\n".into()));
        assert_eq!(s.line(b"DATA"), Step::Reply("OK g\r\n".into()));
        let mut s = Server::new(1000, "g");
        assert_eq!(s.line(b"AUTH EXTERNAL"), Step::Reply("DATA\r\n".into()));
        assert_eq!(
            s.line(format!("DATA {}", hex("1000")).as_bytes()),
            Step::Reply("OK g\r\n".into())
        );
    }

    #[test]
    fn other_identities_mechanisms_and_garbage_are_refused() {
        let mut s = Server::new(1000, "g");
        for bad in [
            format!("AUTH EXTERNAL {}", hex("0")),
            "AUTH EXTERNAL zz".into(),
            "AUTH EXTERNAL 3".into(),
            "AUTH DBUS_COOKIE_SHA1 31".into(),
            "AUTH".into(),
            "AUTH EXTERNAL 30 extra".into(),
        ] {
            assert_eq!(
                s.line(bad.as_bytes()),
                Step::Reply(REJECTED.into()),
                "{bad}"
            );
        }
        assert_eq!(
            s.line(b"NEGOTIATE_UNIX_FD"),
            Step::Reply("ERROR \"unexpected command\"\r\n".into())
        );
        assert_eq!(
            s.line(b"\xff\xfe"),
            Step::Reply("ERROR \"not UTF-8\"\r\n".into())
        );
        assert_eq!(
            s.line(b""),
            Step::Reply("ERROR \"unexpected command\"\r\n".into())
        );
        // Then the command budget runs out.
        let mut last = Step::Begin;
        for _ in 0..MAX_COMMANDS {
            last = s.line(b"CANCEL");
        }
        assert!(matches!(last, Step::Close(_)), "{last:?}");
    }

    /// The handshake over a real socket pair: a client that pipelines its
    /// commands and its first message gets the right replies, and the
    /// message's bytes are left unread; a leading newline, a line without
    /// CR and an endless line each end the handshake with an error.
    #[test]
    fn handshake_reads_nothing_past_begin_and_refuses_bad_streams() {
        use std::io::Write;
        let run = |input: &[u8]| -> (Result<(), String>, Vec<u8>, Vec<u8>) {
            let (server, mut client) = UnixStream::pair().unwrap();
            client.write_all(input).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let server = Async::new(server).unwrap();
            let result = futures_lite::future::block_on(handshake(&server, 0, "g"));
            let mut rest = Vec::new();
            let _ = server.get_ref().read_to_end(&mut rest);
            let mut replies = Vec::new();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            drop(server);
            let _ = client.read_to_end(&mut replies);
            (result, rest, replies)
        };
        let (r, rest, replies) = run(format!(
            "\0AUTH EXTERNAL {}\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nl\x01\0\x01MESSAGE",
            hex("0")
        )
        .as_bytes());
        assert_eq!(r, Ok(()));
        assert_eq!(rest, b"l\x01\0\x01MESSAGE");
        assert_eq!(replies, b"OK g\r\nAGREE_UNIX_FD\r\n");
        for (input, why) in [
            (b"\0\n".to_vec(), "not ended by CRLF"),
            (b"\nAUTH\r\n".to_vec(), "not NUL"),
            (b"\0AUTH EXTERNAL 30\n".to_vec(), "not ended by CRLF"),
            (
                [b"\0".to_vec(), vec![b'A'; 4 * MAX_LINE]].concat(),
                "longer than",
            ),
            (b"\0AUTH EXTERNAL 30\r\n".to_vec(), "hung up"),
        ] {
            let (r, _, _) = run(&input);
            assert!(
                r.as_ref().is_err_and(|e| e.contains(why)),
                "{input:?}: {r:?}"
            );
        }
    }
}
